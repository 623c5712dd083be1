package provider

import (
	"context"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
)

func TestLocalCommandCreateUpdateDelete(t *testing.T) {
	e := newEngine(t)
	dir := t.TempDir()
	record := filepath.Join(dir, "deleted")
	inputs := e.checked(localCommandToken, "local", props(map[string]any{
		"create":      `printf '%s in %s\n' "$GREETING" "$(pwd)"; cat`,
		"delete":      `echo "$PULUMI_COMMAND_STDOUT" > ` + record,
		"dir":         dir,
		"environment": map[string]any{"GREETING": "hello"},
		"stdin":       "from stdin",
	}))
	id, preview, err := e.create(localCommandToken, "local", inputs, true)
	if err != nil || !isComputed(preview["stdout"]) || !strings.HasPrefix(id, "local") {
		t.Fatalf("preview: id %q, stdout %v, err %v", id, preview["stdout"], err)
	}
	id, state := e.mustCreate(localCommandToken, "local", inputs)
	if got, want := str(state, "stdout"), "hello in "+dir+"\nfrom stdin"; got != want {
		t.Fatalf("stdout = %q, want %q", got, want)
	}

	news := e.checked(localCommandToken, "local", props(map[string]any{
		"create":      "echo never",
		"update":      `echo "was: $PULUMI_COMMAND_STDOUT" | tail -n 1`,
		"delete":      `echo "$PULUMI_COMMAND_STDOUT" > ` + record,
		"dir":         dir,
		"interpreter": []any{"/bin/bash", "-c"},
	}))
	state, err = e.update(localCommandToken, "local", id, state, inputs, news, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := str(state, "stdout"); got != "from stdin" {
		t.Fatalf("stdout after update = %q", got)
	}
	if err := e.delete(localCommandToken, "local", id, state); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, record); got != "from stdin\n" {
		t.Fatalf("delete saw PULUMI_COMMAND_STDOUT = %q", got)
	}
}

func TestLocalFailureMessages(t *testing.T) {
	e := newEngine(t)
	_, _, err := e.create(localCommandToken, "local",
		e.checked(localCommandToken, "local", props(map[string]any{"create": "echo half; exit 2"})), false)
	if err == nil || err.Error() != "exit status 2: running \"echo half; exit 2\":\nhalf\n" {
		t.Fatalf("error = %q", err)
	}
	_, _, err = e.create(localCommandToken, "local",
		e.checked(localCommandToken, "local", props(map[string]any{"create": "true", "dir": "/nonexistent"})), false)
	if err == nil || !strings.Contains(err.Error(), "chdir /nonexistent: no such file or directory") {
		t.Fatalf("error = %q", err)
	}
}

func TestLocalAssetAndArchivePaths(t *testing.T) {
	e := newEngine(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"out/a.txt": "a", "out/sub/b.txt": "b", "out/secret.txt": "s", "top.txt": "t"})
	_, state := e.mustCreate(localCommandToken, "local", e.checked(localCommandToken, "local", props(map[string]any{
		"create":       "true",
		"dir":          dir,
		"assetPaths":   []any{"out/**", "!**secret.*"},
		"archivePaths": []any{"*.txt"},
	})))
	var names []string
	for name, v := range state["assets"].ObjectValue() {
		if !v.IsAsset() {
			t.Fatalf("assets[%s] is not an asset: %v", name, v)
		}
		names = append(names, string(name))
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "out/a.txt,out/sub/b.txt" {
		t.Errorf("assets = %v", names)
	}
	archive := state["archive"].ArchiveValue()
	if len(archive.Assets) != 1 || archive.Assets["top.txt"] == nil {
		t.Errorf("archive members = %v", archive.Assets)
	}
}

func TestLocalRunInvoke(t *testing.T) {
	e := newEngine(t)
	resp, err := e.server.Invoke(context.Background(), &pulumirpc.InvokeRequest{
		Tok: localRunToken, Args: toStruct(t, props(map[string]any{"command": "echo ran"})),
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := str(fromStruct(t, resp.GetReturn()), "stdout"); got != "ran" {
		t.Fatalf("stdout = %q", got)
	}
	resp, err = e.server.Invoke(context.Background(), &pulumirpc.InvokeRequest{
		Tok: localRunToken, Args: toStruct(t, props(map[string]any{"dir": "/tmp"})),
	})
	if err != nil || len(resp.GetFailures()) != 1 || resp.GetFailures()[0].GetReason() != "Missing required field 'command' on 'local.RunInputs'" {
		t.Fatalf("missing command: %v %v", resp.GetFailures(), err)
	}
}

// TestOutputLineOver64KiBHangsWhileLogged records an upstream behaviour a
// program must avoid: the log streamer stops at a line longer than 64 KiB
// and the command then never completes while that stream is logged.
func TestOutputLineOver64KiBHangsWhileLogged(t *testing.T) {
	longLine := "head -c 70000 /dev/zero | tr '\\0' x; echo"
	e := newEngine(t)
	_, state := e.mustCreate(localCommandToken, "quiet", e.checked(localCommandToken, "quiet",
		props(map[string]any{"create": longLine, "logging": "none"})))
	if n := len(str(state, "stdout")); n != 70000 {
		t.Fatalf("stdout has %d bytes, want 70000", n)
	}

	done := make(chan error, 1)
	go func() {
		_, _, err := e.create(localCommandToken, "logged", e.checked(localCommandToken, "logged",
			props(map[string]any{"create": longLine})), false)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("a logged 70 KiB line completed (err %v); upstream hangs here", err)
	case <-time.After(3 * time.Second):
	}
	_, _ = e.server.Cancel(context.Background(), nil)
}
