package provider

import (
	"reflect"
	"strings"
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
)

func TestCheckFillsConnectionDefaultsAndKeepsItSecret(t *testing.T) {
	e := newEngine(t)
	inputs := e.checked(remoteCommandToken, "prepare", resource.PropertyMap{
		"create":     resource.NewProperty("true"),
		"connection": secret(map[string]any{"host": "10.0.0.5", "privateKey": "KEY"}),
	})
	connection := inputs["connection"]
	if !connection.IsSecret() {
		t.Fatalf("connection is not secret after Check: %v", connection)
	}
	fields := connection.SecretValue().Element.ObjectValue()
	want := map[string]any{"host": "10.0.0.5", "user": "root", "port": 22.0, "dialErrorLimit": 10.0, "perDialTimeout": 15.0}
	for key, value := range want {
		got, _ := unwrap(fields[resource.PropertyKey(key)])
		if got.V != value {
			t.Errorf("connection.%s = %v, want %v", key, got.V, value)
		}
	}
	if !fields["privateKey"].IsSecret() {
		t.Errorf("connection.privateKey is not marked secret inside the secret connection: %v", fields["privateKey"])
	}
	if _, ok := fields["proxy"]; ok {
		t.Errorf("a proxy appeared without being asked for: %v", fields["proxy"])
	}
}

func TestCheckMakesAPlainConnectionSecretAndFillsProxyDefaults(t *testing.T) {
	e := newEngine(t)
	inputs := e.checked(copyToRemoteToken, "copy", resource.PropertyMap{
		"connection": resource.NewPropertyValue(map[string]any{
			"host": "10.0.0.5", "user": "cc", "port": 2222.0, "dialErrorLimit": 0.0,
			"proxy": map[string]any{"host": "bastion"},
		}),
		"remotePath": resource.NewProperty("/tmp/x"),
		"source":     resource.NewProperty(&resource.Asset{Text: "hello", Hash: "h"}),
	})
	if !inputs["connection"].IsSecret() {
		t.Fatalf("connection not made secret: %v", inputs["connection"])
	}
	fields := inputs["connection"].SecretValue().Element.ObjectValue()
	if fields["user"].StringValue() != "cc" || fields["port"].NumberValue() != 2222 || fields["dialErrorLimit"].NumberValue() != 0 {
		t.Errorf("given values were overwritten by defaults: %v", fields)
	}
	proxy := fields["proxy"].ObjectValue()
	if proxy["user"].StringValue() != "root" || proxy["port"].NumberValue() != 22 || proxy["perDialTimeout"].NumberValue() != 15 {
		t.Errorf("proxy defaults missing: %v", proxy)
	}
}

func TestCheckLeavesAnUnknownConnectionUnknown(t *testing.T) {
	e := newEngine(t)
	inputs := e.checked(remoteCommandToken, "prepare", resource.PropertyMap{
		"create":     resource.NewProperty("true"),
		"connection": resource.MakeSecret(unknown()),
	})
	if !isComputed(inputs["connection"]) && !(inputs["connection"].IsSecret() && isComputed(inputs["connection"].SecretValue().Element)) {
		t.Fatalf("unknown connection became known: %v", inputs["connection"])
	}
	if !inputs["connection"].ContainsSecrets() && !isSecret(inputs["connection"]) {
		t.Fatalf("unknown connection lost its secret flag: %v", inputs["connection"])
	}
}

func TestCheckFailuresNameTheFieldAsUpstreamDoes(t *testing.T) {
	cases := []struct {
		name     string
		token    string
		inputs   resource.PropertyMap
		property string
		reason   string
	}{
		{
			name: "connection missing", token: remoteCommandToken,
			inputs:   props(map[string]any{"create": "true"}),
			property: "connection", reason: "Missing required field 'connection' on 'remote.CommandInputs'",
		},
		{
			name: "host missing", token: remoteCommandToken,
			inputs:   props(map[string]any{"connection": map[string]any{"user": "cc"}}),
			property: "connection", reason: "Missing required field 'host' on 'remote.Connection'",
		},
		{
			name: "port as text", token: remoteCommandToken,
			inputs:   props(map[string]any{"connection": map[string]any{"host": "h", "port": "22"}}),
			property: "connection", reason: "Field 'port' on 'remote.Connection' must be a 'float64'; got 'string' instead",
		},
		{
			name: "unknown input", token: localCommandToken,
			inputs:   props(map[string]any{"create": "true", "cwd": "/tmp"}),
			property: "cwd", reason: "Unrecognized field 'cwd' on 'local.CommandInputs'",
		},
		{
			name: "remote archive", token: copyToRemoteToken,
			inputs: resource.PropertyMap{
				"connection": resource.NewPropertyValue(map[string]any{"host": "h"}),
				"remotePath": resource.NewProperty("/tmp/x"),
				"source":     resource.NewProperty(&resource.Archive{URI: "https://example.invalid/a.tgz", Hash: "h"}),
			},
			property: "archive", reason: "archive must be a path to a file or directory",
		},
		{
			name: "unknown source", token: copyToRemoteToken,
			inputs: resource.PropertyMap{
				"connection": resource.NewPropertyValue(map[string]any{"host": "h"}),
				"remotePath": resource.NewProperty("/tmp/x"),
				"source":     unknown(),
			},
			property: "asset", reason: "either asset or archive must be set",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, failures := newEngine(t).check(c.token, "r", c.inputs)
			for _, f := range failures {
				if f.GetProperty() == c.property && strings.Contains(f.GetReason(), c.reason) {
					return
				}
			}
			t.Fatalf("no failure on %q containing %q; got %v", c.property, c.reason, failures)
		})
	}
}

func TestCheckConfigAddsTheFrameworkVersion(t *testing.T) {
	e := newEngine(t)
	resp, err := e.server.CheckConfig(t.Context(), &pulumirpc.CheckRequest{
		Urn:  urn("pulumi:providers:command", "default_1_2_1"),
		News: toStruct(t, props(map[string]any{"version": "1.2.1"})),
	})
	if err != nil {
		t.Fatal(err)
	}
	got := fromStruct(t, resp.GetInputs())
	want := props(map[string]any{"version": "1.2.1", "__pulumi-go-provider-version": "1.2.0"})
	if !got.DeepEquals(want) {
		t.Fatalf("CheckConfig returned %v, want %v", got, want)
	}
}

// TestDiffDecidesUpdateOrReplaceAsUpstream is the table of what a change of
// each input does. A change inside triggers is reported as an update by the
// provider itself: the SDK's replaceOnChanges ["triggers[*]"] is what makes
// the engine replace in that case.
func TestDiffDecidesUpdateOrReplaceAsUpstream(t *testing.T) {
	connection := map[string]any{"host": "10.0.0.5", "user": "cc", "port": 22.0, "dialErrorLimit": 10.0, "perDialTimeout": 15.0}
	otherHost := map[string]any{"host": "10.0.0.6", "user": "cc", "port": 22.0, "dialErrorLimit": 10.0, "perDialTimeout": 15.0}
	remote := func(extra map[string]any) resource.PropertyMap {
		m := map[string]any{"create": "make", "delete": "stop"}
		for k, v := range extra {
			m[k] = v
		}
		p := props(m)
		if _, ok := extra["connection"]; !ok {
			p["connection"] = secret(connection)
		} else {
			p["connection"] = secret(extra["connection"])
		}
		return p
	}
	asset := func(text string) resource.PropertyValue {
		a, err := resource.NewTextAsset(text)
		if err != nil {
			t.Fatal(err)
		}
		return resource.NewProperty(a)
	}
	copyInputs := func(remotePath string, source resource.PropertyValue, c map[string]any) resource.PropertyMap {
		return resource.PropertyMap{"connection": secret(c), "remotePath": resource.NewProperty(remotePath), "source": source}
	}

	cases := []struct {
		name     string
		token    string
		old, new resource.PropertyMap
		changes  bool
		replaces []string
		detailed map[string]pulumirpc.PropertyDiff_Kind
	}{
		{"nothing changed", remoteCommandToken, remote(nil), remote(nil), false, nil, map[string]pulumirpc.PropertyDiff_Kind{}},
		{"create changed", remoteCommandToken, remote(nil), remote(map[string]any{"create": "make again"}), true, nil,
			map[string]pulumirpc.PropertyDiff_Kind{"create": pulumirpc.PropertyDiff_UPDATE}},
		{"new host", remoteCommandToken, remote(nil), remote(map[string]any{"connection": otherHost}), true, nil,
			map[string]pulumirpc.PropertyDiff_Kind{"connection": pulumirpc.PropertyDiff_UPDATE}},
		{"triggers added", remoteCommandToken, remote(nil), remote(map[string]any{"triggers": []any{"server-1"}}), true,
			[]string{"triggers"}, map[string]pulumirpc.PropertyDiff_Kind{"triggers": pulumirpc.PropertyDiff_ADD_REPLACE}},
		{"trigger changed", remoteCommandToken, remote(map[string]any{"triggers": []any{"server-1"}}),
			remote(map[string]any{"triggers": []any{"server-2"}}), true, nil,
			map[string]pulumirpc.PropertyDiff_Kind{"triggers[0]": pulumirpc.PropertyDiff_UPDATE}},
		{"triggers removed", remoteCommandToken, remote(map[string]any{"triggers": []any{"server-1"}}), remote(nil), true,
			[]string{"triggers"}, map[string]pulumirpc.PropertyDiff_Kind{"triggers": pulumirpc.PropertyDiff_DELETE_REPLACE}},
		{"local dir changed", localCommandToken, props(map[string]any{"create": "x", "dir": "/a"}),
			props(map[string]any{"create": "x", "dir": "/b"}), true, nil,
			map[string]pulumirpc.PropertyDiff_Kind{"dir": pulumirpc.PropertyDiff_UPDATE}},
		{"copy: new content", copyToRemoteToken, copyInputs("/opt/a", asset("one"), connection),
			copyInputs("/opt/a", asset("two"), connection), true, nil,
			map[string]pulumirpc.PropertyDiff_Kind{"source": pulumirpc.PropertyDiff_UPDATE}},
		{"copy: new host", copyToRemoteToken, copyInputs("/opt/a", asset("one"), connection),
			copyInputs("/opt/a", asset("one"), otherHost), true, nil,
			map[string]pulumirpc.PropertyDiff_Kind{"connection": pulumirpc.PropertyDiff_UPDATE}},
		{"copy file: every change replaces", copyFileToken,
			props(map[string]any{"connection": connection, "localPath": "a", "remotePath": "/x"}),
			props(map[string]any{"connection": connection, "localPath": "b", "remotePath": "/x"}), true,
			[]string{"localPath"}, map[string]pulumirpc.PropertyDiff_Kind{"localPath": pulumirpc.PropertyDiff_UPDATE_REPLACE}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEngine(t)
			state := c.old.Copy()
			state["stdout"] = resource.NewProperty("out")
			resp := e.diff(c.token, "r", "r-1234", state, c.old, c.new)
			if got := resp.GetChanges() == pulumirpc.DiffResponse_DIFF_SOME; got != c.changes {
				t.Errorf("changes = %v, want %v", resp.GetChanges(), c.changes)
			}
			if !reflect.DeepEqual(resp.GetReplaces(), c.replaces) {
				t.Errorf("replaces = %v, want %v", resp.GetReplaces(), c.replaces)
			}
			got := map[string]pulumirpc.PropertyDiff_Kind{}
			for k, v := range resp.GetDetailedDiff() {
				got[k] = v.GetKind()
			}
			if !reflect.DeepEqual(got, c.detailed) {
				t.Errorf("detailed diff = %v, want %v", got, c.detailed)
			}
		})
	}
}

func TestReadReturnsTheStateAsItIs(t *testing.T) {
	e := newEngine(t)
	state := props(map[string]any{"create": "echo x", "stdout": "x", "stderr": ""})
	state["connection"] = secret(map[string]any{"host": "h", "user": "cc"})
	resp, err := e.server.Read(t.Context(), &pulumirpc.ReadRequest{
		Urn: urn(remoteCommandToken, "r"), Id: "r-1", Properties: toStruct(t, state), Inputs: toStruct(t, state),
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetId() != "r-1" || !fromStruct(t, resp.GetProperties()).DeepEquals(state) {
		t.Fatalf("Read changed the state: %v", fromStruct(t, resp.GetProperties()))
	}
}

// TestDiffWithoutOldInputsUsesTheState covers an engine that does not send
// old inputs: the inputs are then taken from the state.
func TestDiffWithoutOldInputsUsesTheState(t *testing.T) {
	e := &engine{t: t, server: New("1.2.1", nil)}
	state := props(map[string]any{"create": "echo x", "stdout": "x", "stderr": ""})
	same := e.diff(localCommandToken, "r", "r-1", state, resource.PropertyMap{}, props(map[string]any{"create": "echo x"}))
	changed := e.diff(localCommandToken, "r", "r-1", state, resource.PropertyMap{}, props(map[string]any{"create": "echo y"}))
	if same.GetChanges() != pulumirpc.DiffResponse_DIFF_NONE || changed.GetChanges() != pulumirpc.DiffResponse_DIFF_SOME {
		t.Fatalf("same: %v, changed: %v", same.GetChanges(), changed.GetChanges())
	}
}
