package provider

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"golang.org/x/crypto/ssh"

	"chipersist.test/pulumi-resource-command/internal/sshtest"
)

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		path := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return string(data)
}

// archiveOf is a FileArchive as the engine hands it over: path and hash.
func archiveOf(t *testing.T, path string) resource.PropertyValue {
	t.Helper()
	a, err := resource.NewPathArchive(path)
	if err != nil {
		t.Fatal(err)
	}
	return resource.NewProperty(a)
}

func assetOf(t *testing.T, path string) resource.PropertyValue {
	t.Helper()
	a, err := resource.NewPathAsset(path)
	if err != nil {
		t.Fatal(err)
	}
	return resource.NewProperty(a)
}

type copyFixture struct {
	e       *engine
	server  *sshtest.Server
	private string
	local   string // the program's files
	remote  string // the "remote host's" directory
}

func newCopyFixture(t *testing.T) *copyFixture {
	public, private, _ := keyPair(t, "")
	f := &copyFixture{
		e:       newEngine(t),
		server:  sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{public}}),
		private: private,
		local:   t.TempDir(),
		remote:  t.TempDir(),
	}
	writeFiles(t, f.local, map[string]string{
		"docker/compose.yaml":    "services: {}\n",
		"docker/minio/policy":    "read\n",
		"scripts/prepare.sh":     "#!/bin/bash\n",
		"scripts/nested/tool.sh": "#!/bin/bash\n",
	})
	return f
}

func (f *copyFixture) inputs(t *testing.T, server *sshtest.Server, source resource.PropertyValue, remotePath string) resource.PropertyMap {
	t.Helper()
	return f.e.checked(copyToRemoteToken, "copy", resource.PropertyMap{
		"connection": connection(server, map[string]any{"privateKey": f.private}),
		"source":     source,
		"remotePath": resource.NewProperty(remotePath),
	})
}

func (f *copyFixture) copy(t *testing.T, source resource.PropertyValue, remotePath string) (string, resource.PropertyMap, error) {
	t.Helper()
	return f.e.create(copyToRemoteToken, "copy", f.inputs(t, f.server, source, remotePath), false)
}

func TestCopyDirectoryArchiveLandsInsideAnExistingDirectory(t *testing.T) {
	f := newCopyFixture(t)
	destination := filepath.Join(f.remote, "opt")
	writeFiles(t, destination, map[string]string{"docker/compose.yaml": "old\n", "docker/kept.txt": "kept\n"})

	id, outputs, err := f.copy(t, archiveOf(t, filepath.Join(f.local, "docker")), destination)
	if err != nil {
		t.Fatal(err)
	}
	if len(id) != 8 {
		t.Errorf("id = %q, want 8 hex digits", id)
	}
	if got := readFile(t, filepath.Join(destination, "docker/compose.yaml")); got != "services: {}\n" {
		t.Errorf("existing file not overwritten: %q", got)
	}
	if got := readFile(t, filepath.Join(destination, "docker/minio/policy")); got != "read\n" {
		t.Errorf("nested file: %q", got)
	}
	if got := readFile(t, filepath.Join(destination, "docker/kept.txt")); got != "kept\n" {
		t.Errorf("a remote file the source does not have was touched: %q", got)
	}
	if _, err := os.Stat(filepath.Join(destination, "compose.yaml")); err == nil {
		t.Errorf("the archive was unpacked into the destination itself")
	}
	if !outputs["source"].IsArchive() || !outputs["connection"].IsSecret() || str(outputs, "remotePath") != destination {
		t.Errorf("outputs do not mirror the inputs: %v", outputs)
	}
}

func TestCopyDirectoryPlacement(t *testing.T) {
	cases := []struct {
		name       string
		source     string // relative to the local files, may end in /
		remotePath string // relative to the remote root
		want       []string
	}{
		{"missing destination gets the directory inside it", "scripts", "new/place",
			[]string{"new/place/scripts/prepare.sh", "new/place/scripts/nested/tool.sh"}},
		{"trailing slash copies the contents", "scripts/", "flat",
			[]string{"flat/prepare.sh", "flat/nested/tool.sh"}},
		{"file into an existing directory", "scripts/prepare.sh", ".",
			[]string{"prepare.sh"}},
		{"file to a new path makes its parents", "scripts/prepare.sh", "a/b/run.sh",
			[]string{"a/b/run.sh"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newCopyFixture(t)
			source := filepath.Join(f.local, c.source)
			if strings.HasSuffix(c.source, "/") {
				source += "/"
			}
			var value resource.PropertyValue
			if info, err := os.Stat(source); err == nil && info.IsDir() {
				value = archiveOf(t, source)
			} else {
				value = assetOf(t, source)
			}
			if _, _, err := f.copy(t, value, filepath.Join(f.remote, c.remotePath)); err != nil {
				t.Fatal(err)
			}
			for _, name := range c.want {
				if _, err := os.Stat(filepath.Join(f.remote, name)); err != nil {
					t.Errorf("%s missing after the copy: %v", name, err)
				}
			}
		})
	}
}

func TestCopyRefusals(t *testing.T) {
	f := newCopyFixture(t)
	writeFiles(t, f.remote, map[string]string{"afile": "x"})

	_, _, err := f.copy(t, archiveOf(t, filepath.Join(f.local, "scripts")), filepath.Join(f.remote, "afile"))
	if err == nil {
		t.Errorf("a directory was copied onto a file")
	}

	text, _ := resource.NewTextAsset("hello")
	_, _, err = f.copy(t, resource.NewProperty(text), f.remote)
	if err == nil || !strings.Contains(err.Error(), "is a directory; when using a text asset, remotePath must be a file path") {
		t.Errorf("text asset onto a directory: %v", err)
	}
	if _, _, err := f.copy(t, resource.NewProperty(text), filepath.Join(f.remote, "deep/greeting")); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(f.remote, "deep/greeting")); got != "hello" {
		t.Errorf("text asset wrote %q", got)
	}
}

// TestCopyUpdateCopiesOnlyForNewContentOrPath shows that pointing the copy
// at another host (a new server) copies nothing there: only a new content
// hash or remote path copies again; a replacement (triggers) is what makes a
// new host receive the files.
func TestCopyUpdateCopiesOnlyForNewContentOrPath(t *testing.T) {
	f := newCopyFixture(t)
	destination := filepath.Join(f.remote, "first")
	inputs := f.inputs(t, f.server, archiveOf(t, filepath.Join(f.local, "docker")), destination)
	id, state := f.e.mustCreate(copyToRemoteToken, "copy", inputs)

	newServer := sshtest.Start(t, sshtest.Options{AuthorizedKeys: f.server.Options().AuthorizedKeys})
	moved := f.inputs(t, newServer, archiveOf(t, filepath.Join(f.local, "docker")), destination)
	if resp := f.e.diff(copyToRemoteToken, "copy", id, state, inputs, moved); len(resp.GetReplaces()) != 0 {
		t.Fatalf("a new host replaces the copy: %v", resp.GetReplaces())
	}
	state, err := f.e.update(copyToRemoteToken, "copy", id, state, inputs, moved, false)
	if err != nil {
		t.Fatal(err)
	}
	if newServer.Connections() != 0 {
		t.Fatalf("the update copied to the new host although nothing else changed")
	}

	writeFiles(t, f.local, map[string]string{"docker/compose.yaml": "services: {db: {}}\n"})
	changed := f.inputs(t, newServer, archiveOf(t, filepath.Join(f.local, "docker")), destination)
	if _, err := f.e.update(copyToRemoteToken, "copy", id, state, moved, changed, false); err != nil {
		t.Fatal(err)
	}
	if newServer.Connections() != 1 || readFile(t, filepath.Join(destination, "docker/compose.yaml")) != "services: {db: {}}\n" {
		t.Fatalf("new content was not copied (%d connections)", newServer.Connections())
	}
}

func TestCopyPreviewCopiesNothing(t *testing.T) {
	f := newCopyFixture(t)
	id, _, err := f.e.create(copyToRemoteToken, "copy",
		f.inputs(t, f.server, archiveOf(t, filepath.Join(f.local, "docker")), filepath.Join(f.remote, "x")), true)
	if err != nil || id != "" || f.server.Connections() != 0 {
		t.Fatalf("preview: id %q, err %v, %d connections", id, err, f.server.Connections())
	}
}

func TestCopyFileCopiesOneFile(t *testing.T) {
	f := newCopyFixture(t)
	inputs := f.e.checked(copyFileToken, "file", resource.PropertyMap{
		"connection": connection(f.server, map[string]any{"privateKey": f.private}),
		"localPath":  resource.NewProperty(filepath.Join(f.local, "scripts/prepare.sh")),
		"remotePath": resource.NewProperty(filepath.Join(f.remote, "prepare.sh")),
	})
	if _, _, err := f.e.create(copyFileToken, "file", inputs, false); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(f.remote, "prepare.sh")); got != "#!/bin/bash\n" {
		t.Fatalf("copied %q", got)
	}
}
