package provider

import (
	"crypto/ed25519"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"chipersist.test/pulumi-resource-command/internal/sshtest"
)

// connection is what the program passes: the server's address and user,
// with extra settings; Check fills the rest.
func connection(s *sshtest.Server, extra map[string]any) resource.PropertyValue {
	c := map[string]any{"host": s.Host, "port": float64(s.Port), "user": "cc"}
	for k, v := range extra {
		c[k] = v
	}
	return secret(c)
}

func remoteInputs(e *engine, conn resource.PropertyValue, commands map[string]any) resource.PropertyMap {
	news := props(commands)
	news["connection"] = conn
	return e.checked(remoteCommandToken, "step", news)
}

// startAgent serves an SSH agent holding keys on a fresh socket.
func startAgent(t *testing.T, keys ...ed25519.PrivateKey) string {
	t.Helper()
	keyring := agent.NewKeyring()
	for _, k := range keys {
		if err := keyring.Add(agent.AddedKey{PrivateKey: k}); err != nil {
			t.Fatal(err)
		}
	}
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "agent.sock")
	listener, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Close() })
	go func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				return
			}
			go func() { _ = agent.ServeAgent(keyring, conn); conn.Close() }()
		}
	}()
	return socket
}

// staleSocket is an agent socket left behind by an agent that has gone: the
// file exists, nothing listens.
func staleSocket(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "agent.sock")
	listener, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	listener.(*net.UnixListener).SetUnlinkOnClose(false)
	listener.Close()
	return socket
}

func TestRemoteCommandCreateUpdateDeleteCarryThePreviousOutput(t *testing.T) {
	public, private, _ := keyPair(t, "")
	server := sshtest.Start(t, sshtest.Options{
		AuthorizedKeys: []ssh.PublicKey{public},
		AcceptEnv:      []string{"PULUMI_COMMAND_STDOUT", "PULUMI_COMMAND_STDERR"},
	})
	e := newEngine(t)
	conn := connection(server, map[string]any{"privateKey": private})
	inputs := remoteInputs(e, conn, map[string]any{
		"create": "echo created; echo note >&2",
		"delete": `echo "stopping $PULUMI_COMMAND_STDOUT"`,
	})

	id, preview, err := e.create(remoteCommandToken, "step", inputs, true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(id, "step") || len(id) != len("step")+8 {
		t.Errorf("preview id = %q, want the name and 8 hex digits", id)
	}
	if !isComputed(preview["stdout"]) || !isComputed(preview["stderr"]) {
		t.Errorf("stdout/stderr are not unknown in the preview: %v", preview)
	}
	if len(server.Execs()) != 0 {
		t.Fatalf("the preview ran a command: %v", server.Execs())
	}

	id, state := e.mustCreate(remoteCommandToken, "step", inputs)
	if str(state, "stdout") != "created" || str(state, "stderr") != "note" {
		t.Fatalf("outputs after create: stdout %q stderr %q", str(state, "stdout"), str(state, "stderr"))
	}
	if execs := server.Execs(); len(execs) != 1 || execs[0].User != "cc" || len(execs[0].Env) != 0 {
		t.Fatalf("create ran %+v, want one command as cc with no environment", execs)
	}

	// A changed create with no update runs the new create, with the old output offered.
	news := remoteInputs(e, conn, map[string]any{
		"create": `echo "again after $PULUMI_COMMAND_STDOUT"`,
		"delete": `echo "stopping $PULUMI_COMMAND_STDOUT"`,
	})
	previewed, err := e.update(remoteCommandToken, "step", id, state, inputs, news, true)
	if err != nil {
		t.Fatal(err)
	}
	if !isComputed(previewed["stdout"]) || len(server.Execs()) != 1 {
		t.Fatalf("update preview: stdout %v, %d commands run", previewed["stdout"], len(server.Execs()))
	}
	state, err = e.update(remoteCommandToken, "step", id, state, inputs, news, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := str(state, "stdout"); got != "again after created" {
		t.Fatalf("stdout after update = %q", got)
	}

	// update, when given, runs instead of create.
	inputs, news = news, remoteInputs(e, conn, map[string]any{
		"create": "echo never",
		"update": `echo "updated after $PULUMI_COMMAND_STDOUT"`,
		"delete": `echo "stopping $PULUMI_COMMAND_STDOUT"`,
	})
	state, err = e.update(remoteCommandToken, "step", id, state, inputs, news, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := str(state, "stdout"); got != "updated after again after created" {
		t.Fatalf("stdout after update = %q", got)
	}

	if err := e.delete(remoteCommandToken, "step", id, state); err != nil {
		t.Fatal(err)
	}
	execs := server.Execs()
	last := execs[len(execs)-1]
	if last.Command != `echo "stopping $PULUMI_COMMAND_STDOUT"` ||
		last.Env["PULUMI_COMMAND_STDOUT"] != "updated after again after created" ||
		last.Env["PULUMI_COMMAND_STDERR"] != "" {
		t.Fatalf("delete ran %+v", last)
	}
}

func TestRemoteCommandWithoutDeleteRunsNothingOnDelete(t *testing.T) {
	public, private, _ := keyPair(t, "")
	server := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{public}})
	e := newEngine(t)
	inputs := remoteInputs(e, connection(server, map[string]any{"privateKey": private}), map[string]any{"create": "true"})
	id, state := e.mustCreate(remoteCommandToken, "step", inputs)
	if err := e.delete(remoteCommandToken, "step", id, state); err != nil {
		t.Fatal(err)
	}
	if n := server.Connections(); n != 1 {
		t.Fatalf("%d connections, want only the create's", n)
	}
}

func TestRemoteFailureCarriesExitStatusCommandAndOutput(t *testing.T) {
	public, private, _ := keyPair(t, "")
	server := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{public}})
	e := newEngine(t)
	inputs := remoteInputs(e, connection(server, map[string]any{"privateKey": private}),
		map[string]any{"create": "echo partial; echo broken >&2; exit 3"})
	_, _, err := e.create(remoteCommandToken, "step", inputs, false)
	if err == nil {
		t.Fatal("a failing create succeeded")
	}
	want := "Process exited with status 3: running \"echo partial; echo broken >&2; exit 3\":\n"
	if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "partial\n") ||
		!strings.Contains(err.Error(), "broken\n") {
		t.Fatalf("error %q does not carry %q and both streams", err, want)
	}
}

func TestRemoteEnvironmentIsRefusedUnlessAcceptEnvAllowsIt(t *testing.T) {
	public, private, _ := keyPair(t, "")
	refusing := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{public}})
	e := newEngine(t)
	inputs := remoteInputs(e, connection(refusing, map[string]any{"privateKey": private}), map[string]any{
		"create": "echo $VOLUME", "environment": map[string]any{"VOLUME": "/dev/vdb"},
	})
	_, _, err := e.create(remoteCommandToken, "step", inputs, false)
	if err == nil || !strings.Contains(err.Error(), `could not set environment variable "VOLUME": ssh: setenv failed`) {
		t.Fatalf("create with a refused variable: %v", err)
	}
	if len(refusing.Execs()) != 0 {
		t.Fatalf("the command ran although its environment was refused")
	}
	logged := false
	for _, entry := range e.log.Entries() {
		logged = logged || (entry.Severity == diag.Error && !entry.Ephemeral && strings.Contains(entry.Message, "Unable to set 'VOLUME'"))
	}
	if !logged {
		t.Errorf("no error logged about AcceptEnv: %v", e.log.Entries())
	}

	accepting := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{public}, AcceptEnv: []string{"VOLUME"}})
	inputs = remoteInputs(e, connection(accepting, map[string]any{"privateKey": private}), map[string]any{
		"create": "echo $VOLUME", "environment": map[string]any{"VOLUME": "/dev/vdb"},
	})
	_, state := e.mustCreate(remoteCommandToken, "step", inputs)
	if got := str(state, "stdout"); got != "/dev/vdb" {
		t.Fatalf("stdout = %q", got)
	}
}

func TestRefusedPreviousOutputOnlyWarns(t *testing.T) {
	public, private, _ := keyPair(t, "")
	server := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{public}})
	e := newEngine(t)
	conn := connection(server, map[string]any{"privateKey": private})
	inputs := remoteInputs(e, conn, map[string]any{"create": "echo one"})
	id, state := e.mustCreate(remoteCommandToken, "step", inputs)
	news := remoteInputs(e, conn, map[string]any{"create": "echo two"})
	state, err := e.update(remoteCommandToken, "step", id, state, inputs, news, false)
	if err != nil {
		t.Fatalf("update failed on a refused PULUMI_COMMAND_STDOUT: %v", err)
	}
	if str(state, "stdout") != "two" || !contains(server.RefusedEnv(), "PULUMI_COMMAND_STDOUT") {
		t.Fatalf("stdout %q, refused %v", str(state, "stdout"), server.RefusedEnv())
	}
	warned := false
	for _, entry := range e.log.Entries() {
		warned = warned || (entry.Severity == diag.Warning && strings.Contains(entry.Message, "Unable to set 'PULUMI_COMMAND_STDOUT'"))
	}
	if !warned {
		t.Errorf("no warning logged: %v", e.log.Entries())
	}

	// With addPreviousOutputInEnv false nothing is offered.
	refusedBefore := len(server.RefusedEnv())
	inputs, news = news, remoteInputs(e, conn, map[string]any{"create": "echo three", "addPreviousOutputInEnv": false})
	if _, err := e.update(remoteCommandToken, "step", id, state, inputs, news, false); err != nil {
		t.Fatal(err)
	}
	if len(server.RefusedEnv()) != refusedBefore {
		t.Fatalf("env requests sent with addPreviousOutputInEnv false: %v", server.RefusedEnv())
	}
}

func TestRemoteStdinAndLogging(t *testing.T) {
	public, private, _ := keyPair(t, "")
	server := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{public}})
	conn := connection(server, map[string]any{"privateKey": private})
	cases := []struct {
		logging        any
		stdout, stderr bool
	}{
		{nil, true, true},
		{"stdoutAndStderr", true, true},
		{"stdout", true, false},
		{"stderr", false, true},
		{"none", false, false},
	}
	for _, c := range cases {
		e := newEngine(t)
		commands := map[string]any{"create": "cat; echo to-stderr >&2", "stdin": "from-stdin"}
		if c.logging != nil {
			commands["logging"] = c.logging
		}
		_, state := e.mustCreate(remoteCommandToken, "step", remoteInputs(e, conn, commands))
		if str(state, "stdout") != "from-stdin" || str(state, "stderr") != "to-stderr" {
			t.Fatalf("logging %v: outputs %q / %q", c.logging, str(state, "stdout"), str(state, "stderr"))
		}
		lines := e.statusMessages()
		if contains(lines, "from-stdin") != c.stdout || contains(lines, "to-stderr") != c.stderr {
			t.Errorf("logging %v: streamed %q", c.logging, lines)
		}
	}
}

func TestSecretInputsKeepSecretOutputsButNotStdout(t *testing.T) {
	public, private, _ := keyPair(t, "")
	server := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{public}})
	e := newEngine(t)
	news := resource.PropertyMap{
		"connection": connection(server, map[string]any{"privateKey": private}),
		"create":     secret("echo s3cret"),
	}
	_, state := e.mustCreate(remoteCommandToken, "step", e.checked(remoteCommandToken, "step", news))
	if !state["create"].IsSecret() || !state["connection"].IsSecret() {
		t.Errorf("secret inputs lost their secrecy in the outputs: %v", state)
	}
	if state["stdout"].IsSecret() || str(state, "stdout") != "s3cret" {
		t.Errorf("stdout = %v; upstream leaves it plain (additionalSecretOutputs makes it secret)", state["stdout"])
	}
}

func TestAuthentication(t *testing.T) {
	public, private, _ := keyPair(t, "")
	lockedPublic, locked, _ := keyPair(t, "open sesame")
	agentPublic, _, agentKey := keyPair(t, "")

	t.Run("password", func(t *testing.T) {
		server := sshtest.Start(t, sshtest.Options{Password: "pw"})
		e := newEngine(t)
		_, state := e.mustCreate(remoteCommandToken, "step",
			remoteInputs(e, connection(server, map[string]any{"password": "pw"}), map[string]any{"create": "echo in"}))
		if str(state, "stdout") != "in" || server.Logins()[0] != "password" {
			t.Fatalf("stdout %q, logins %v", str(state, "stdout"), server.Logins())
		}
	})

	t.Run("passphrase-protected key needs privateKeyPassword", func(t *testing.T) {
		server := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{lockedPublic}})
		e := newEngine(t)
		_, _, err := e.create(remoteCommandToken, "step",
			remoteInputs(e, connection(server, map[string]any{"privateKey": locked}), map[string]any{"create": "true"}), false)
		if err == nil || !strings.Contains(err.Error(), "passphrase protected") || server.Connections() != 0 {
			t.Fatalf("without the passphrase: %v (%d connections)", err, server.Connections())
		}
		e.mustCreate(remoteCommandToken, "step", remoteInputs(e, connection(server, map[string]any{
			"privateKey": locked, "privateKeyPassword": "open sesame",
		}), map[string]any{"create": "true"}))
	})

	t.Run("agent named by agentSocketPath", func(t *testing.T) {
		server := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{agentPublic}})
		e := newEngine(t)
		socket := startAgent(t, agentKey)
		e.mustCreate(remoteCommandToken, "step", remoteInputs(e,
			connection(server, map[string]any{"agentSocketPath": socket}), map[string]any{"create": "true"}))
	})

	t.Run("SSH_AUTH_SOCK is used without any other setting", func(t *testing.T) {
		server := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{agentPublic}})
		t.Setenv("SSH_AUTH_SOCK", startAgent(t, agentKey))
		e := newEngine(t)
		e.mustCreate(remoteCommandToken, "step", remoteInputs(e, connection(server, nil), map[string]any{"create": "true"}))
	})

	t.Run("a stale SSH_AUTH_SOCK fails even with a good key, before any dial", func(t *testing.T) {
		server := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{public}})
		socket := staleSocket(t)
		t.Setenv("SSH_AUTH_SOCK", socket)
		e := newEngine(t)
		start := time.Now()
		_, _, err := e.create(remoteCommandToken, "step",
			remoteInputs(e, connection(server, map[string]any{"privateKey": private}), map[string]any{"create": "true"}), false)
		want := "dial unix " + socket + ": connect: connection refused"
		if err == nil || err.Error() != want {
			t.Fatalf("error = %v, want %q", err, want)
		}
		if server.Connections() != 0 || time.Since(start) > 2*time.Second {
			t.Fatalf("%d connections in %v: the agent failure should stop everything at once", server.Connections(), time.Since(start))
		}
	})

	t.Run("a missing agentSocketPath fails the same way", func(t *testing.T) {
		server := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{public}})
		e := newEngine(t)
		_, _, err := e.create(remoteCommandToken, "step", remoteInputs(e, connection(server, map[string]any{
			"privateKey": private, "agentSocketPath": "/nonexistent/agent.sock",
		}), map[string]any{"create": "true"}), false)
		if err == nil || !strings.Contains(err.Error(), "dial unix /nonexistent/agent.sock: connect: no such file or directory") {
			t.Fatalf("error = %v", err)
		}
	})

	t.Run("a rejected key is retried up to the dial limit", func(t *testing.T) {
		server := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{agentPublic}})
		e := newEngine(t)
		_, _, err := e.create(remoteCommandToken, "step", remoteInputs(e, connection(server, map[string]any{
			"privateKey": private, "dialErrorLimit": 1,
		}), map[string]any{"create": "true"}), false)
		if err == nil || !strings.HasPrefix(err.Error(), "after 1 failed attempts: ssh: handshake failed: ssh: unable to authenticate") {
			t.Fatalf("error = %v", err)
		}
		if server.Connections() != 2 {
			t.Fatalf("%d connections, want 2 (limit 1 allows one retry)", server.Connections())
		}
	})

	t.Run("a rejected key hides the agent's keys", func(t *testing.T) {
		// The key and the agent are both "publickey": once the key is
		// refused, the SSH library does not try the agent.
		server := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{agentPublic}})
		e := newEngine(t)
		_, _, err := e.create(remoteCommandToken, "step", remoteInputs(e, connection(server, map[string]any{
			"privateKey": private, "agentSocketPath": startAgent(t, agentKey), "dialErrorLimit": 0,
		}), map[string]any{"create": "true"}), false)
		if err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
			t.Fatalf("error = %v", err)
		}
		e.mustCreate(remoteCommandToken, "step", remoteInputs(e, connection(server, map[string]any{
			"agentSocketPath": startAgent(t, agentKey),
		}), map[string]any{"create": "true"}))
	})

	t.Run("hostKey is enforced", func(t *testing.T) {
		server := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{public}})
		e := newEngine(t)
		e.mustCreate(remoteCommandToken, "step", remoteInputs(e, connection(server, map[string]any{
			"privateKey": private, "hostKey": server.AuthorizedKey(),
		}), map[string]any{"create": "true"}))
		other := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{public}})
		_, _, err := e.create(remoteCommandToken, "step", remoteInputs(e, connection(server, map[string]any{
			"privateKey": private, "hostKey": other.AuthorizedKey(), "dialErrorLimit": 0,
		}), map[string]any{"create": "true"}), false)
		if err == nil || !strings.Contains(err.Error(), "after 0 failed attempts: ssh: handshake failed: ssh: host key mismatch") {
			t.Fatalf("error = %v", err)
		}
	})

}

func TestDialRetries(t *testing.T) {
	public, private, _ := keyPair(t, "")

	t.Run("a host that refuses the first connections is reached", func(t *testing.T) {
		server := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{public}, DropFirst: 2})
		e := newEngine(t)
		start := time.Now()
		e.mustCreate(remoteCommandToken, "step", remoteInputs(e,
			connection(server, map[string]any{"privateKey": private}), map[string]any{"create": "true"}))
		elapsed := time.Since(start)
		if server.Connections() != 3 {
			t.Fatalf("%d connections, want 3", server.Connections())
		}
		lines := e.statusMessages()
		if !contains(lines, "Dial 1/10 failed: retrying") || !contains(lines, "Dial 2/10 failed: retrying") {
			t.Errorf("retry messages: %q", lines)
		}
		// The SDK's retry loop waits 100 ms, then 150 ms, between attempts.
		if elapsed < 240*time.Millisecond {
			t.Errorf("three attempts took %v: the pause between attempts is gone", elapsed)
		}
	})

	t.Run("the limit counts failures, and the message counts one fewer", func(t *testing.T) {
		server := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{public}, DropFirst: 100})
		e := newEngine(t)
		_, _, err := e.create(remoteCommandToken, "step", remoteInputs(e, connection(server, map[string]any{
			"privateKey": private, "dialErrorLimit": 2,
		}), map[string]any{"create": "true"}), false)
		if err == nil || !strings.HasPrefix(err.Error(), "after 2 failed attempts: ssh: handshake failed") {
			t.Fatalf("error = %v", err)
		}
		if server.Connections() != 3 {
			t.Fatalf("%d connections, want 3", server.Connections())
		}
	})

	t.Run("a closed port", func(t *testing.T) {
		listener, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		address := listener.Addr().String()
		listener.Close()
		host, port, _ := net.SplitHostPort(address)
		e := newEngine(t)
		news := props(map[string]any{"create": "true"})
		news["connection"] = secret(map[string]any{"host": host, "port": mustAtof(t, port), "privateKey": private, "dialErrorLimit": 1})
		_, _, err = e.create(remoteCommandToken, "step", e.checked(remoteCommandToken, "step", news), false)
		want := "after 1 failed attempts: dial tcp " + address + ": connect: connection refused"
		if err == nil || err.Error() != want {
			t.Fatalf("error = %v, want %q", err, want)
		}
	})
}

func TestProxyJumpHost(t *testing.T) {
	public, private, _ := keyPair(t, "")
	bastion := sshtest.Start(t, sshtest.Options{Password: "jump"})
	target := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{public}})
	e := newEngine(t)
	_, state := e.mustCreate(remoteCommandToken, "step", remoteInputs(e, connection(target, map[string]any{
		"privateKey": private,
		"proxy":      map[string]any{"host": bastion.Host, "port": float64(bastion.Port), "password": "jump"},
	}), map[string]any{"create": "echo through"}))
	if str(state, "stdout") != "through" || len(bastion.Logins()) != 1 || len(target.Execs()) != 1 {
		t.Fatalf("stdout %q, bastion logins %v, target execs %v", str(state, "stdout"), bastion.Logins(), target.Execs())
	}
}

func mustAtof(t *testing.T, s string) float64 {
	t.Helper()
	var f float64
	for _, c := range s {
		f = f*10 + float64(c-'0')
	}
	return f
}
