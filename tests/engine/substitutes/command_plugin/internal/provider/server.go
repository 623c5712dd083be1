// Package provider serves the pulumi-command 1.2.1 resource provider
// protocol: the engine's gRPC calls are answered with the upstream
// provider's behaviour (Check defaults and secrets, Diff's update versus
// replace decisions, the preview's unknowns, the run semantics of each
// resource).
package provider

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/plugin"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/sig"
	"github.com/pulumi/pulumi/sdk/v3/go/common/tokens"
	pulumiprovider "github.com/pulumi/pulumi/sdk/v3/go/pulumi/provider"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"chipersist.test/pulumi-resource-command/internal/hostlog"
	"chipersist.test/pulumi-resource-command/internal/local"
)

// Server implements pulumirpc.ResourceProviderServer.
type Server struct {
	pulumirpc.UnimplementedResourceProviderServer

	version string

	mu                sync.Mutex
	host              *pulumiprovider.HostClient
	sink              hostlog.Sink
	supportsOldInputs bool
	inFlight          map[int]context.CancelFunc
	nextOperation     int
}

// New returns a provider that reports version and logs through host (nil:
// no engine, messages go to stderr).
func New(version string, host *pulumiprovider.HostClient) *Server {
	return &Server{version: version, host: host, inFlight: map[int]context.CancelFunc{}}
}

// LogTo sends the messages of calls to sink while no engine is attached;
// tests use it.
func (s *Server) LogTo(sink hostlog.Sink) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sink = sink
}

// engineSink sends one request's messages to the engine, tied to its URN.
type engineSink struct {
	ctx  context.Context
	host *pulumiprovider.HostClient
	urn  resource.URN
}

func (s engineSink) Log(severity diag.Severity, message string) {
	if err := s.host.Log(s.ctx, severity, s.urn, message); err != nil {
		hostlog.From(context.Background()).Log(severity, message)
	}
}

func (s engineSink) LogStatus(severity diag.Severity, message string) {
	if err := s.host.LogStatus(s.ctx, severity, s.urn, message); err != nil {
		hostlog.From(context.Background()).LogStatus(severity, message)
	}
}

// begin prepares the context of one call: its log sink, its timeout (the
// resource's custom timeout, in seconds; 0 for none) and its cancellation
// by Cancel. The returned function must be called when the call ends.
func (s *Server) begin(ctx context.Context, urn string, timeoutSeconds float64) (context.Context, func()) {
	var cancel context.CancelFunc
	if timeoutSeconds == 0 {
		ctx, cancel = context.WithCancel(ctx)
	} else {
		ctx, cancel = context.WithTimeout(ctx, time.Duration(timeoutSeconds)*time.Second)
	}
	s.mu.Lock()
	host := s.host
	sink := s.sink
	id := s.nextOperation
	s.nextOperation++
	s.inFlight[id] = cancel
	s.mu.Unlock()
	if host != nil {
		ctx = hostlog.WithSink(ctx, engineSink{ctx: ctx, host: host, urn: resource.URN(urn)})
	} else if sink != nil {
		ctx = hostlog.WithSink(ctx, sink)
	}
	return ctx, func() {
		s.mu.Lock()
		delete(s.inFlight, id)
		s.mu.Unlock()
		cancel()
	}
}

// typeKey is how the provider finds a resource or function: by module and
// name, whatever the package part of the token.
func typeKey(token string) string {
	t := tokens.Type(token)
	return t.Module().Name().String() + tokens.TokenDelimiter + t.Name().String()
}

func (s *Server) handler(urn string) (handler, error) {
	key := typeKey(string(resource.URN(urn).Type()))
	h, ok := handlers[key]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "Resource '%s' not found", key)
	}
	return h, nil
}

// GetPluginInfo reports the version the binary was built with.
func (s *Server) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: s.version}, nil
}

// GetSchema returns the package schema.
func (s *Server) GetSchema(context.Context, *pulumirpc.GetSchemaRequest) (*pulumirpc.GetSchemaResponse, error) {
	doc, err := Schema(s.version)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.GetSchemaResponse{Schema: string(doc)}, nil
}

// Attach connects to the engine when the provider was started on its own.
func (s *Server) Attach(_ context.Context, req *pulumirpc.PluginAttach) (*emptypb.Empty, error) {
	host, err := pulumiprovider.NewHostClient(req.GetAddress())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.host = host
	s.mu.Unlock()
	return &emptypb.Empty{}, nil
}

// Cancel ends every call in flight (local commands are killed; remote ones
// run on).
func (s *Server) Cancel(context.Context, *emptypb.Empty) (*emptypb.Empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, cancel := range s.inFlight {
		cancel()
		delete(s.inFlight, id)
	}
	return &emptypb.Empty{}, nil
}

// CheckConfig accepts any configuration. String values that hold JSON are
// decoded, and the framework's version key is added, as upstream does.
func (s *Server) CheckConfig(ctx context.Context, req *pulumirpc.CheckRequest) (*pulumirpc.CheckResponse, error) {
	_, end := s.begin(ctx, req.GetUrn(), 0)
	defer end()
	news, err := unmarshal(req.GetNews())
	if err != nil {
		return nil, err
	}
	for key, value := range news {
		news[key] = decodeJSONConfig(value)
	}
	news[frameworkVersionKey] = resource.NewProperty(frameworkVersion)
	inputs, err := marshal(news)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.CheckResponse{Inputs: inputs}, nil
}

// decodeJSONConfig turns a configuration string holding JSON into the value
// it encodes, with secrets and unknowns in their wire form understood.
func decodeJSONConfig(v resource.PropertyValue) resource.PropertyValue {
	inner, w := unwrap(v)
	if w.computed || !inner.IsString() {
		return v
	}
	var decoded any
	if err := json.Unmarshal([]byte(inner.StringValue()), &decoded); err != nil {
		return v
	}
	var replace func(any) (resource.PropertyValue, bool)
	replace = func(x any) (resource.PropertyValue, bool) {
		if text, ok := x.(string); ok {
			switch text {
			case plugin.UnknownBoolValue, plugin.UnknownNumberValue, plugin.UnknownStringValue,
				plugin.UnknownArrayValue, plugin.UnknownObjectValue, plugin.UnknownAssetValue,
				plugin.UnknownArchiveValue:
				return resource.MakeComputed(resource.NewProperty("")), true
			}
		}
		if object, ok := x.(map[string]any); ok && object[sig.Key] == sig.Secret {
			return resource.MakeSecret(resource.NewPropertyValueRepl(object["value"], nil, replace)), true
		}
		return resource.PropertyValue{}, false
	}
	return w.rewrap(resource.NewPropertyValueRepl(decoded, nil, replace))
}

// DiffConfig is left to the engine, as upstream leaves it.
func (s *Server) DiffConfig(context.Context, *pulumirpc.DiffRequest) (*pulumirpc.DiffResponse, error) {
	return nil, status.Error(codes.Unimplemented, "DiffConfig is not implemented")
}

// Configure records whether the engine sends old inputs and announces what
// the provider accepts.
func (s *Server) Configure(_ context.Context, req *pulumirpc.ConfigureRequest) (*pulumirpc.ConfigureResponse, error) {
	s.mu.Lock()
	s.supportsOldInputs = req.GetSendsOldInputs() && req.GetSendsOldInputsToDelete()
	s.mu.Unlock()
	return &pulumirpc.ConfigureResponse{
		AcceptSecrets:   true,
		SupportsPreview: true,
		AcceptResources: true,
		AcceptOutputs:   true,
	}, nil
}

// Check validates a resource's inputs and fills their defaults.
func (s *Server) Check(ctx context.Context, req *pulumirpc.CheckRequest) (*pulumirpc.CheckResponse, error) {
	_, end := s.begin(ctx, req.GetUrn(), 0)
	defer end()
	h, err := s.handler(req.GetUrn())
	if err != nil {
		return nil, err
	}
	news, err := unmarshal(req.GetNews())
	if err != nil {
		return nil, err
	}
	checked, failures, err := h.check(news)
	if err != nil {
		return nil, err
	}
	inputs, err := marshal(checked)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.CheckResponse{Inputs: inputs, Failures: failures}, nil
}

// Diff compares the old inputs with the new ones. A changed input means an
// update, except a top-level triggers that appears or disappears (and every
// change of a resource without update), which means a replacement. Changes
// inside triggers (triggers[0]) are reported as updates here; the SDKs
// register every resource with replaceOnChanges ["triggers[*]"], which makes
// the engine replace.
func (s *Server) Diff(ctx context.Context, req *pulumirpc.DiffRequest) (*pulumirpc.DiffResponse, error) {
	_, end := s.begin(ctx, req.GetUrn(), 0)
	defer end()
	h, err := s.handler(req.GetUrn())
	if err != nil {
		return nil, err
	}
	state, err := unmarshal(req.GetOlds())
	if err != nil {
		return nil, err
	}
	news, err := unmarshal(req.GetNews())
	if err != nil {
		return nil, err
	}
	oldInputs, err := unmarshal(req.GetOldInputs())
	if err != nil {
		return nil, err
	}
	for _, ignored := range req.GetIgnoreChanges() {
		if v, ok := state[resource.PropertyKey(ignored)]; ok {
			news[resource.PropertyKey(ignored)] = v
		}
	}
	for key := range news {
		if key == "version" || strings.HasPrefix(string(key), "__") {
			delete(news, key)
		}
	}
	spec := h.spec()
	s.mu.Lock()
	supportsOldInputs := s.supportsOldInputs
	s.mu.Unlock()
	if !supportsOldInputs {
		oldInputs = resource.PropertyMap{}
		for _, p := range spec.inputs {
			if v, ok := state[resource.PropertyKey(p.name)]; ok {
				oldInputs[resource.PropertyKey(p.name)] = v
			} else {
				oldInputs[resource.PropertyKey(p.name)] = resource.NewNullProperty()
			}
		}
	}

	replaceOnChanges := map[string]bool{}
	for _, p := range spec.inputs {
		replaceOnChanges[p.name] = p.replaceOnChanges
	}
	objectDiff := oldInputs.Diff(news)
	detailed := map[string]*pulumirpc.PropertyDiff{}
	replaces, diffs := map[string]bool{}, map[string]bool{}
	for path, d := range plugin.NewDetailedDiffFromObjectDiff(objectDiff, false) {
		kind := d.Kind
		if !h.hasUpdate() || replaceOnChanges[path] {
			kind = kind.AsReplace()
		}
		head := path
		if parsed, err := resource.ParsePropertyPath(path); err == nil && len(parsed) > 0 {
			if name, ok := parsed[0].(string); ok {
				head = name
			}
		}
		diffs[head] = true
		if kind.IsReplace() {
			replaces[head] = true
		}
		detailed[path] = &pulumirpc.PropertyDiff{Kind: rpcDiffKind(kind)}
	}
	changes := pulumirpc.DiffResponse_DIFF_NONE
	if objectDiff.AnyChanges() {
		changes = pulumirpc.DiffResponse_DIFF_SOME
	}
	return &pulumirpc.DiffResponse{
		Changes:         changes,
		Replaces:        sortedKeys(replaces),
		Diffs:           sortedKeys(diffs),
		DetailedDiff:    detailed,
		HasDetailedDiff: true,
	}, nil
}

func rpcDiffKind(kind plugin.DiffKind) pulumirpc.PropertyDiff_Kind {
	switch kind {
	case plugin.DiffAddReplace:
		return pulumirpc.PropertyDiff_ADD_REPLACE
	case plugin.DiffDelete:
		return pulumirpc.PropertyDiff_DELETE
	case plugin.DiffDeleteReplace:
		return pulumirpc.PropertyDiff_DELETE_REPLACE
	case plugin.DiffUpdate:
		return pulumirpc.PropertyDiff_UPDATE
	case plugin.DiffUpdateReplace:
		return pulumirpc.PropertyDiff_UPDATE_REPLACE
	default:
		return pulumirpc.PropertyDiff_ADD
	}
}

func sortedKeys(m map[string]bool) []string {
	if len(m) == 0 {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Create runs the resource's create step (nothing in a preview).
func (s *Server) Create(ctx context.Context, req *pulumirpc.CreateRequest) (*pulumirpc.CreateResponse, error) {
	ctx, end := s.begin(ctx, req.GetUrn(), req.GetTimeout())
	defer end()
	h, err := s.handler(req.GetUrn())
	if err != nil {
		return nil, err
	}
	inputs, err := unmarshal(req.GetProperties())
	if err != nil {
		return nil, err
	}
	urn := resource.URN(req.GetUrn())
	id, outputs, err := h.create(ctx, urn.Name(), inputs, req.GetPreview())
	if err != nil {
		return nil, err
	}
	if id == "" && !req.GetPreview() {
		return nil, fmt.Errorf("'%s' was created without an id", urn)
	}
	markOutputs(outputs, nil, inputs, propertyNames(h.spec().inputs), true, req.GetPreview())
	properties, err := marshal(outputs)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.CreateResponse{Id: id, Properties: properties}, nil
}

// Read returns the resource's state as it is: the provider keeps no record
// of its own to compare with.
func (s *Server) Read(ctx context.Context, req *pulumirpc.ReadRequest) (*pulumirpc.ReadResponse, error) {
	_, end := s.begin(ctx, req.GetUrn(), 0)
	defer end()
	if _, err := s.handler(req.GetUrn()); err != nil {
		return nil, err
	}
	properties, err := unmarshal(req.GetProperties())
	if err != nil {
		return nil, err
	}
	inputs, err := unmarshal(req.GetInputs())
	if err != nil {
		return nil, err
	}
	propertiesStruct, err := marshal(properties)
	if err != nil {
		return nil, err
	}
	inputsStruct, err := marshal(inputs)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.ReadResponse{Id: req.GetId(), Properties: propertiesStruct, Inputs: inputsStruct}, nil
}

// Update runs the resource's update step (nothing in a preview).
func (s *Server) Update(ctx context.Context, req *pulumirpc.UpdateRequest) (*pulumirpc.UpdateResponse, error) {
	ctx, end := s.begin(ctx, req.GetUrn(), req.GetTimeout())
	defer end()
	h, err := s.handler(req.GetUrn())
	if err != nil {
		return nil, err
	}
	if !h.hasUpdate() {
		return nil, status.Errorf(codes.Unimplemented, "Update is not implemented for resource %s", req.GetUrn())
	}
	state, err := unmarshal(req.GetOlds())
	if err != nil {
		return nil, err
	}
	news, err := unmarshal(req.GetNews())
	if err != nil {
		return nil, err
	}
	for _, ignored := range req.GetIgnoreChanges() {
		if v, ok := state[resource.PropertyKey(ignored)]; ok {
			news[resource.PropertyKey(ignored)] = v
		}
	}
	outputs, err := h.update(ctx, state, news, req.GetPreview())
	if err != nil {
		return nil, err
	}
	markOutputs(outputs, state, news, propertyNames(h.spec().inputs), false, req.GetPreview())
	properties, err := marshal(outputs)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.UpdateResponse{Properties: properties}, nil
}

// Delete runs the resource's delete step with the state's inputs.
func (s *Server) Delete(ctx context.Context, req *pulumirpc.DeleteRequest) (*emptypb.Empty, error) {
	ctx, end := s.begin(ctx, req.GetUrn(), req.GetTimeout())
	defer end()
	h, err := s.handler(req.GetUrn())
	if err != nil {
		return nil, err
	}
	state, err := unmarshal(req.GetProperties())
	if err != nil {
		return nil, err
	}
	if err := h.delete(ctx, state); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Invoke serves command:local:run.
func (s *Server) Invoke(ctx context.Context, req *pulumirpc.InvokeRequest) (*pulumirpc.InvokeResponse, error) {
	ctx, end := s.begin(ctx, "", 0)
	defer end()
	if key := typeKey(req.GetTok()); key != typeKey(localRunToken) {
		return nil, status.Errorf(codes.NotFound, "Invoke '%s' not found", key)
	}
	args, err := unmarshal(req.GetArgs())
	if err != nil {
		return nil, err
	}
	in, failures, err := decode[local.RunInputs](args)
	if err != nil {
		return nil, err
	}
	if len(failures) > 0 {
		return &pulumirpc.InvokeResponse{Failures: failures}, nil
	}
	result, err := local.Run(ctx, in.Command, in.BaseInputs, local.Result{})
	if err != nil {
		return nil, err
	}
	ret, err := marshal(applySecrets(localOutputs(args, result), localRunSpec.inputs))
	if err != nil {
		return nil, err
	}
	return &pulumirpc.InvokeResponse{Return: ret}, nil
}

// Construct, Call and Parameterize answer as upstream does: not implemented.
func (s *Server) Construct(context.Context, *pulumirpc.ConstructRequest) (*pulumirpc.ConstructResponse, error) {
	return nil, status.Error(codes.Unimplemented, "Construct is not implemented")
}

func (s *Server) Call(context.Context, *pulumirpc.CallRequest) (*pulumirpc.CallResponse, error) {
	return nil, status.Error(codes.Unimplemented, "Call is not implemented")
}

func (s *Server) Parameterize(context.Context, *pulumirpc.ParameterizeRequest) (*pulumirpc.ParameterizeResponse, error) {
	return nil, status.Error(codes.Unimplemented, "Parameterize is not implemented")
}
