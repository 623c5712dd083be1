package provider

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"strings"
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/plugin"
	"github.com/pulumi/pulumi/sdk/v3/go/common/tokens"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"golang.org/x/crypto/ssh"
	"google.golang.org/protobuf/types/known/structpb"

	"chipersist.test/pulumi-resource-command/internal/hostlog"
)

// The agent socket of whoever runs the tests must not leak into them: the
// provider dials SSH_AUTH_SOCK whenever it is set.
func TestMain(m *testing.M) {
	os.Unsetenv("SSH_AUTH_SOCK")
	os.Exit(m.Run())
}

// engine drives a provider the way the Pulumi engine does, one gRPC call at
// a time, and keeps what the provider logged.
type engine struct {
	t      *testing.T
	server *Server
	log    *hostlog.Recorder
}

func newEngine(t *testing.T) *engine {
	t.Helper()
	e := &engine{t: t, server: New("1.2.1", nil), log: hostlog.NewRecorder()}
	e.server.LogTo(e.log)
	if _, err := e.server.Configure(context.Background(), &pulumirpc.ConfigureRequest{
		SendsOldInputs: true, SendsOldInputsToDelete: true,
	}); err != nil {
		t.Fatal(err)
	}
	return e
}

func urn(token, name string) string {
	return string(resource.NewURN("dev", "chi-persist", "", tokens.Type(token), name))
}

func toStruct(t *testing.T, m resource.PropertyMap) *structpb.Struct {
	t.Helper()
	s, err := plugin.MarshalProperties(m, plugin.MarshalOptions{KeepUnknowns: true, KeepSecrets: true, KeepResources: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fromStruct reads a response as the engine does.
func fromStruct(t *testing.T, s *structpb.Struct) resource.PropertyMap {
	t.Helper()
	m, err := plugin.UnmarshalProperties(s, plugin.MarshalOptions{KeepUnknowns: true, KeepSecrets: true, KeepResources: true})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (e *engine) check(token, name string, news resource.PropertyMap) (resource.PropertyMap, []*pulumirpc.CheckFailure) {
	e.t.Helper()
	resp, err := e.server.Check(context.Background(), &pulumirpc.CheckRequest{
		Urn: urn(token, name), News: toStruct(e.t, news), Olds: toStruct(e.t, resource.PropertyMap{}),
	})
	if err != nil {
		e.t.Fatalf("Check: %v", err)
	}
	return fromStruct(e.t, resp.GetInputs()), resp.GetFailures()
}

// checked is check that must pass.
func (e *engine) checked(token, name string, news resource.PropertyMap) resource.PropertyMap {
	e.t.Helper()
	inputs, failures := e.check(token, name, news)
	if len(failures) > 0 {
		e.t.Fatalf("Check failed: %v", failures)
	}
	return inputs
}

func (e *engine) create(token, name string, inputs resource.PropertyMap, preview bool) (string, resource.PropertyMap, error) {
	e.t.Helper()
	resp, err := e.server.Create(context.Background(), &pulumirpc.CreateRequest{
		Urn: urn(token, name), Properties: toStruct(e.t, inputs), Preview: preview,
	})
	if err != nil {
		return "", nil, err
	}
	return resp.GetId(), fromStruct(e.t, resp.GetProperties()), nil
}

func (e *engine) mustCreate(token, name string, inputs resource.PropertyMap) (string, resource.PropertyMap) {
	e.t.Helper()
	id, outputs, err := e.create(token, name, inputs, false)
	if err != nil {
		e.t.Fatalf("Create: %v", err)
	}
	return id, outputs
}

func (e *engine) diff(token, name, id string, state, oldInputs, news resource.PropertyMap) *pulumirpc.DiffResponse {
	e.t.Helper()
	resp, err := e.server.Diff(context.Background(), &pulumirpc.DiffRequest{
		Urn: urn(token, name), Id: id,
		Olds: toStruct(e.t, state), News: toStruct(e.t, news), OldInputs: toStruct(e.t, oldInputs),
	})
	if err != nil {
		e.t.Fatalf("Diff: %v", err)
	}
	return resp
}

func (e *engine) update(token, name, id string, state, oldInputs, news resource.PropertyMap, preview bool) (
	resource.PropertyMap, error,
) {
	e.t.Helper()
	resp, err := e.server.Update(context.Background(), &pulumirpc.UpdateRequest{
		Urn: urn(token, name), Id: id, Preview: preview,
		Olds: toStruct(e.t, state), News: toStruct(e.t, news), OldInputs: toStruct(e.t, oldInputs),
	})
	if err != nil {
		return nil, err
	}
	return fromStruct(e.t, resp.GetProperties()), nil
}

func (e *engine) delete(token, name, id string, state resource.PropertyMap) error {
	e.t.Helper()
	_, err := e.server.Delete(context.Background(), &pulumirpc.DeleteRequest{
		Urn: urn(token, name), Id: id, Properties: toStruct(e.t, state), OldInputs: toStruct(e.t, state),
	})
	return err
}

// statusMessages are the ephemeral lines logged so far.
func (e *engine) statusMessages() []string {
	var lines []string
	for _, entry := range e.log.Entries() {
		if entry.Ephemeral {
			lines = append(lines, entry.Message)
		}
	}
	return lines
}

// props builds a property map from plain Go values.
func props(values map[string]any) resource.PropertyMap {
	return resource.NewPropertyMapFromMap(values)
}

func secret(v any) resource.PropertyValue { return resource.MakeSecret(resource.NewPropertyValue(v)) }

func unknown() resource.PropertyValue { return resource.MakeComputed(resource.NewProperty("")) }

func str(m resource.PropertyMap, key string) string {
	v, _ := unwrap(m[resource.PropertyKey(key)])
	if !v.IsString() {
		return ""
	}
	return v.StringValue()
}

// keyPair makes an ed25519 key: the public half, and the private half in
// OpenSSH PEM form, encrypted when passphrase is not empty.
func keyPair(t *testing.T, passphrase string) (ssh.PublicKey, string, ed25519.PrivateKey) {
	t.Helper()
	public, private, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var block *pem.Block
	if passphrase == "" {
		block, err = ssh.MarshalPrivateKey(private, "")
	} else {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(private, "", []byte(passphrase))
	}
	if err != nil {
		t.Fatal(err)
	}
	sshPublic, err := ssh.NewPublicKey(public)
	if err != nil {
		t.Fatal(err)
	}
	return sshPublic, string(pem.EncodeToMemory(block)), private
}

func contains(haystack []string, needle string) bool {
	for _, s := range haystack {
		if strings.Contains(s, needle) {
			return true
		}
	}
	return false
}
