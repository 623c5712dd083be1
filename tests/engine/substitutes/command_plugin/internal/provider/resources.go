package provider

import (
	"context"
	"errors"
	"fmt"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"

	"chipersist.test/pulumi-resource-command/internal/local"
	"chipersist.test/pulumi-resource-command/internal/remote"
)

// handler is one resource type's behaviour. Inputs reaching create, update
// and delete have been through check; outputs are the checked inputs plus
// what the resource adds.
type handler interface {
	spec() resourceSpec
	// hasUpdate is false for a resource whose every change is a replacement.
	hasUpdate() bool
	check(inputs resource.PropertyMap) (resource.PropertyMap, []*pulumirpc.CheckFailure, error)
	create(ctx context.Context, name string, inputs resource.PropertyMap, preview bool) (string, resource.PropertyMap, error)
	update(ctx context.Context, state, inputs resource.PropertyMap, preview bool) (resource.PropertyMap, error)
	delete(ctx context.Context, state resource.PropertyMap) error
}

var handlers = map[string]handler{
	"local:Command":       localCommand{},
	"remote:Command":      remoteCommand{},
	"remote:CopyToRemote": copyToRemote{},
	"remote:CopyFile":     copyFile{},
}

// defaultCheck decodes the inputs to find what is wrong with them; when
// nothing is, it fills the defaults. Either way the declared secrets are
// marked.
func defaultCheck[T any](inputs resource.PropertyMap, props []property, skip ...string) (
	resource.PropertyMap, []*pulumirpc.CheckFailure, error,
) {
	_, failures, err := decode[T](inputs, skip...)
	if err != nil {
		return nil, nil, err
	}
	if len(failures) > 0 {
		return applySecrets(inputs, props), failures, nil
	}
	return applySecrets(applyDefaults(inputs, props), props), nil, nil
}

func withStrings(m resource.PropertyMap, values map[string]string) resource.PropertyMap {
	out := m.Copy()
	for k, v := range values {
		out[resource.PropertyKey(k)] = resource.NewProperty(v)
	}
	return out
}

func stringOutput(state resource.PropertyMap, key string) string {
	v, _ := unwrap(state[resource.PropertyKey(key)])
	if v.IsString() {
		return v.StringValue()
	}
	return ""
}

func newID(prefix string) (string, error) {
	return resource.NewUniqueHex(prefix, 8, 0)
}

// --- command:local:Command ---

type localCommand struct{}

func (localCommand) spec() resourceSpec { s, _ := lookupResourceSpec(localCommandToken); return s }
func (localCommand) hasUpdate() bool    { return true }

func (c localCommand) check(inputs resource.PropertyMap) (resource.PropertyMap, []*pulumirpc.CheckFailure, error) {
	return defaultCheck[local.CommandInputs](inputs, c.spec().inputs)
}

func localPrevious(state resource.PropertyMap) local.Result {
	previous := local.Result{Stdout: stringOutput(state, "stdout"), Stderr: stringOutput(state, "stderr")}
	if v, _ := unwrap(state["archive"]); v.IsArchive() {
		previous.Archive = v.ArchiveValue()
	}
	if v, _ := unwrap(state["assets"]); v.IsObject() {
		previous.Assets = map[string]*resource.Asset{}
		for name, item := range v.ObjectValue() {
			if a, _ := unwrap(item); a.IsAsset() {
				previous.Assets[string(name)] = a.AssetValue()
			}
		}
	}
	return previous
}

func localOutputs(inputs resource.PropertyMap, result local.Result) resource.PropertyMap {
	out := withStrings(inputs, map[string]string{"stdout": result.Stdout, "stderr": result.Stderr})
	if result.Assets != nil {
		assets := resource.PropertyMap{}
		for name, asset := range result.Assets {
			assets[resource.PropertyKey(name)] = resource.NewProperty(asset)
		}
		out["assets"] = resource.NewProperty(assets)
	}
	if result.Archive != nil {
		out["archive"] = resource.NewProperty(result.Archive)
	}
	return out
}

func (localCommand) create(ctx context.Context, name string, inputs resource.PropertyMap, preview bool) (
	string, resource.PropertyMap, error,
) {
	in, err := decodeKnown[local.CommandInputs](inputs, "inputs")
	if err != nil {
		return "", nil, err
	}
	id, err := newID(name)
	if err != nil || preview || in.Create == nil {
		return id, localOutputs(inputs, local.Result{}), err
	}
	result, err := local.Run(ctx, *in.Create, in.BaseInputs, local.Result{})
	return id, localOutputs(inputs, result), err
}

func (localCommand) update(ctx context.Context, state, inputs resource.PropertyMap, preview bool) (
	resource.PropertyMap, error,
) {
	in, err := decodeKnown[local.CommandInputs](inputs, "inputs")
	if err != nil {
		return nil, err
	}
	previous := localPrevious(state)
	command := in.Create
	if in.Update != nil {
		command = in.Update
	}
	if preview || command == nil {
		return localOutputs(inputs, previous), nil
	}
	result, err := local.Run(ctx, *command, in.BaseInputs, previous)
	return localOutputs(inputs, result), err
}

func (localCommand) delete(ctx context.Context, state resource.PropertyMap) error {
	in, err := decodeKnown[local.CommandInputs](state, "state", "stdout", "stderr", "assets", "archive")
	if err != nil {
		return err
	}
	if in.Delete == nil {
		return nil
	}
	_, err = local.Run(ctx, *in.Delete, in.BaseInputs, localPrevious(state))
	return err
}

// --- command:remote:Command ---

type remoteCommand struct{}

func (remoteCommand) spec() resourceSpec { s, _ := lookupResourceSpec(remoteCommandToken); return s }
func (remoteCommand) hasUpdate() bool    { return true }

func (c remoteCommand) check(inputs resource.PropertyMap) (resource.PropertyMap, []*pulumirpc.CheckFailure, error) {
	return defaultCheck[remote.CommandInputs](inputs, c.spec().inputs)
}

func remoteOutputs(inputs resource.PropertyMap, out remote.Output) resource.PropertyMap {
	return withStrings(inputs, map[string]string{"stdout": out.Stdout, "stderr": out.Stderr})
}

func (remoteCommand) create(ctx context.Context, name string, inputs resource.PropertyMap, preview bool) (
	string, resource.PropertyMap, error,
) {
	in, err := decodeKnown[remote.CommandInputs](inputs, "inputs")
	if err != nil {
		return "", nil, err
	}
	id, err := newID(name)
	if err != nil {
		return "", remoteOutputs(inputs, remote.Output{}), err
	}
	if preview || in.Create == nil {
		return id, remoteOutputs(inputs, remote.Output{}), nil
	}
	out, err := remote.Run(ctx, *in.Create, *in, remote.Output{})
	return id, remoteOutputs(inputs, out), err
}

func (remoteCommand) update(ctx context.Context, state, inputs resource.PropertyMap, preview bool) (
	resource.PropertyMap, error,
) {
	in, err := decodeKnown[remote.CommandInputs](inputs, "inputs")
	if err != nil {
		return nil, err
	}
	previous := remote.Output{Stdout: stringOutput(state, "stdout"), Stderr: stringOutput(state, "stderr")}
	command := in.Create
	if in.Update != nil {
		command = in.Update
	}
	if preview || command == nil {
		return remoteOutputs(inputs, previous), nil
	}
	out, err := remote.Run(ctx, *command, *in, previous)
	return remoteOutputs(inputs, out), err
}

func (remoteCommand) delete(ctx context.Context, state resource.PropertyMap) error {
	in, err := decodeKnown[remote.CommandInputs](state, "state", "stdout", "stderr")
	if err != nil {
		return err
	}
	if in.Delete == nil {
		return nil
	}
	previous := remote.Output{Stdout: stringOutput(state, "stdout"), Stderr: stringOutput(state, "stderr")}
	_, err = remote.Run(ctx, *in.Delete, *in, previous)
	return err
}

// --- command:remote:CopyToRemote ---

type copyToRemote struct{}

func (copyToRemote) spec() resourceSpec { s, _ := lookupResourceSpec(copyToRemoteToken); return s }
func (copyToRemote) hasUpdate() bool    { return true }

// readSource reads CopyToRemote's source; an unknown source reads as
// neither an asset nor an archive.
func readSource(inputs resource.PropertyMap) (remote.Source, bool) {
	v, present := inputs["source"]
	if !present {
		return remote.Source{}, false
	}
	v, w := unwrap(v)
	var s remote.Source
	if !w.computed {
		if v.IsAsset() {
			s.Asset = v.AssetValue()
		}
		if v.IsArchive() {
			s.Archive = v.ArchiveValue()
		}
	}
	return s, true
}

func (c copyToRemote) check(inputs resource.PropertyMap) (resource.PropertyMap, []*pulumirpc.CheckFailure, error) {
	checked, failures, err := defaultCheck[remote.CopyToRemoteInputs](inputs, c.spec().inputs, "source")
	if err != nil {
		return nil, nil, err
	}
	source, present := readSource(inputs)
	if !present {
		failures = append(failures, &pulumirpc.CheckFailure{
			Property: "source",
			Reason:   "Missing required field 'source' on 'remote.CopyToRemoteInputs'",
		})
	}
	hasAsset, hasArchive := source.Asset != nil, source.Archive != nil
	if !hasAsset && !hasArchive {
		failures = append(failures, &pulumirpc.CheckFailure{
			Property: "asset", Reason: "either asset or archive must be set",
		})
	}
	if hasAsset && !source.Asset.IsPath() && !source.Asset.IsText() {
		failures = append(failures, &pulumirpc.CheckFailure{
			Property: "asset", Reason: "asset must be a path-based file asset or a text asset",
		})
	}
	if hasArchive && !source.Archive.IsPath() {
		failures = append(failures, &pulumirpc.CheckFailure{
			Property: "archive", Reason: "archive must be a path to a file or directory",
		})
	}
	return checked, failures, nil
}

func decodeCopyToRemote(inputs resource.PropertyMap, what string) (*remote.CopyToRemoteInputs, error) {
	in, err := decodeKnown[remote.CopyToRemoteInputs](inputs, what, "source")
	if err != nil {
		return nil, err
	}
	source, _ := readSource(inputs)
	if source.Asset == nil && source.Archive == nil {
		return nil, fmt.Errorf("invalid %s: source must be an asset or an archive", what)
	}
	in.Source = source
	return in, nil
}

func (copyToRemote) create(ctx context.Context, _ string, inputs resource.PropertyMap, preview bool) (
	string, resource.PropertyMap, error,
) {
	if preview {
		return "", inputs.Copy(), nil
	}
	in, err := decodeCopyToRemote(inputs, "inputs")
	if err != nil {
		return "", nil, err
	}
	if err := remote.CopyToRemote(ctx, *in); err != nil {
		return "", inputs.Copy(), err
	}
	id, err := newID("")
	return id, inputs.Copy(), err
}

// update copies again only when the source's content hash or the remote
// path changed: a new connection (another host) alone copies nothing.
func (copyToRemote) update(ctx context.Context, state, inputs resource.PropertyMap, preview bool) (
	resource.PropertyMap, error,
) {
	if preview {
		return inputs.Copy(), nil
	}
	news, err := decodeCopyToRemote(inputs, "inputs")
	if err != nil {
		return nil, err
	}
	olds, err := decodeCopyToRemote(state, "state")
	if err != nil {
		return nil, err
	}
	if news.Source.Hash() != olds.Source.Hash() || news.RemotePath != olds.RemotePath {
		if err := remote.CopyToRemote(ctx, *news); err != nil {
			return inputs.Copy(), err
		}
	}
	return inputs.Copy(), nil
}

func (copyToRemote) delete(context.Context, resource.PropertyMap) error { return nil }

// --- command:remote:CopyFile (deprecated) ---

type copyFile struct{}

func (copyFile) spec() resourceSpec { s, _ := lookupResourceSpec(copyFileToken); return s }
func (copyFile) hasUpdate() bool    { return false }

func (c copyFile) check(inputs resource.PropertyMap) (resource.PropertyMap, []*pulumirpc.CheckFailure, error) {
	return defaultCheck[remote.CopyFileInputs](inputs, c.spec().inputs)
}

func (copyFile) create(ctx context.Context, _ string, inputs resource.PropertyMap, preview bool) (
	string, resource.PropertyMap, error,
) {
	if preview {
		return "", inputs.Copy(), nil
	}
	in, err := decodeKnown[remote.CopyFileInputs](inputs, "inputs")
	if err != nil {
		return "", nil, err
	}
	if err := remote.CopyFile(ctx, *in); err != nil {
		return "", inputs.Copy(), err
	}
	id, err := newID("")
	return id, inputs.Copy(), err
}

func (copyFile) update(context.Context, resource.PropertyMap, resource.PropertyMap, bool) (
	resource.PropertyMap, error,
) {
	return nil, errors.New("Update is not implemented for resource command:remote:CopyFile")
}

func (copyFile) delete(context.Context, resource.PropertyMap) error { return nil }
