package provider

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/plugin"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/mapper"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/protobuf/types/known/structpb"
)

// unmarshal reads a property map from the wire the way the upstream
// provider's framework does: unknowns, secrets, resources and output values
// kept, nulls dropped, then normalised through the SDK's property.Map.
func unmarshal(s *structpb.Struct) (resource.PropertyMap, error) {
	m, err := plugin.UnmarshalProperties(s, plugin.MarshalOptions{
		KeepUnknowns:     true,
		SkipNulls:        true,
		KeepResources:    true,
		KeepSecrets:      true,
		KeepOutputValues: true,
	})
	if err != nil {
		return nil, err
	}
	return normalise(m), nil
}

// marshal writes a property map back, normalised the same way.
func marshal(m resource.PropertyMap) (*structpb.Struct, error) {
	return plugin.MarshalProperties(normalise(m), plugin.MarshalOptions{
		KeepUnknowns:     true,
		SkipNulls:        true,
		KeepSecrets:      true,
		KeepOutputValues: true,
		KeepResources:    true,
	})
}

func normalise(m resource.PropertyMap) resource.PropertyMap {
	if m == nil {
		m = resource.PropertyMap{}
	}
	return resource.ToResourcePropertyMap(resource.FromResourcePropertyMap(m))
}

func isComputed(v resource.PropertyValue) bool {
	return v.IsComputed() || (v.IsOutput() && !v.OutputValue().Known)
}

func isSecret(v resource.PropertyValue) bool {
	return v.IsSecret() || (v.IsOutput() && v.OutputValue().Secret)
}

func makeComputed(v resource.PropertyValue) resource.PropertyValue {
	switch {
	case v.IsOutput():
		o := v.OutputValue()
		o.Known = false
		return resource.NewProperty(o)
	case v.IsSecret():
		return resource.NewProperty(resource.Output{Element: v.SecretValue().Element, Secret: true})
	case v.IsComputed():
		return v
	default:
		return resource.MakeComputed(v)
	}
}

func makeSecret(v resource.PropertyValue) resource.PropertyValue {
	switch {
	case v.IsComputed():
		return resource.NewProperty(resource.Output{Element: v.Input().Element, Secret: true})
	case v.IsOutput():
		o := v.OutputValue()
		o.Secret = true
		return resource.NewProperty(o)
	case v.IsSecret():
		return v
	default:
		return resource.MakeSecret(v)
	}
}

// unwrap separates a value from its secret and unknown wrappers; rewrap
// puts them back around a (possibly changed) element.
type wrapping struct{ secret, computed bool }

func unwrap(v resource.PropertyValue) (resource.PropertyValue, wrapping) {
	var w wrapping
	for {
		switch {
		case v.IsSecret():
			w.secret = true
			v = v.SecretValue().Element
		case v.IsComputed():
			w.computed = true
			v = v.Input().Element
		case v.IsOutput():
			o := v.OutputValue()
			w.secret = w.secret || o.Secret
			w.computed = w.computed || !o.Known
			v = o.Element
		default:
			return v, w
		}
	}
}

func (w wrapping) rewrap(v resource.PropertyValue) resource.PropertyValue {
	if w.computed {
		v = makeComputed(v)
	}
	if w.secret {
		v = makeSecret(v)
	}
	return v
}

// sameValue compares two values, treating secret and unknown wrappers as
// flags of the value rather than as structure, and never panicking on
// unknowns.
func sameValue(a, b resource.PropertyValue) bool {
	a, wa := unwrap(a)
	b, wb := unwrap(b)
	if wa != wb {
		return false
	}
	switch {
	case a.IsArray() && b.IsArray():
		x, y := a.ArrayValue(), b.ArrayValue()
		if len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameValue(x[i], y[i]) {
				return false
			}
		}
		return true
	case a.IsObject() && b.IsObject():
		x, y := a.ObjectValue(), b.ObjectValue()
		if len(x) != len(y) {
			return false
		}
		for k, xv := range x {
			yv, ok := y[k]
			if !ok || !sameValue(xv, yv) {
				return false
			}
		}
		return true
	case a.IsNull() && b.IsNull():
		return true
	case a.IsBool() && b.IsBool():
		return a.BoolValue() == b.BoolValue()
	case a.IsNumber() && b.IsNumber():
		return a.NumberValue() == b.NumberValue()
	case a.IsString() && b.IsString():
		return a.StringValue() == b.StringValue()
	case a.IsResourceReference() && b.IsResourceReference():
		return a.DeepEquals(b)
	case a.IsAsset() && b.IsAsset():
		return a.AssetValue().Equals(b.AssetValue())
	case a.IsArchive() && b.IsArchive():
		return a.ArchiveValue().Equals(b.ArchiveValue())
	default:
		return false
	}
}

// plain strips secret and unknown wrappers so the SDK's mapper can decode
// the value into t. An unknown value becomes the zero value of its declared
// type (a struct with its required fields zeroed), so a preview with
// unknowns passes the same checks as the final run.
func plain(v resource.PropertyValue, t reflect.Type, align bool) resource.PropertyValue {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	v, w := unwrap(v)
	if w.computed {
		align = true
	}
	if t == nil || t.Kind() == reflect.Interface {
		if align {
			return v
		}
		t = nil
	}

	var elem reflect.Type
	if t != nil {
		switch t.Kind() {
		case reflect.Slice, reflect.Array, reflect.Map:
			elem = t.Elem()
		}
	}
	if !align {
		switch {
		case v.IsArray():
			return plainArray(v, elem, align)
		case v.IsObject() && (t == nil || t.Kind() != reflect.Struct):
			return plainObject(v, elem, align)
		case !v.IsObject():
			return v
		}
	}

	switch t.Kind() {
	case reflect.Slice, reflect.Array:
		return plainArray(v, elem, align)
	case reflect.Map:
		return plainObject(v, elem, align)
	case reflect.Struct:
		result := resource.PropertyMap{}
		if v.IsObject() {
			result = v.ObjectValue().Copy()
		}
		for _, f := range taggedFields(t) {
			key := resource.PropertyKey(f.name)
			if inner, ok := result[key]; ok {
				result[key] = plain(inner, f.typ, align)
			} else if !f.optional && align {
				result[key] = plain(resource.NewNullProperty(), f.typ, true)
			}
		}
		return resource.NewProperty(result)
	case reflect.String:
		if v.IsString() {
			return v
		}
		return resource.NewProperty("")
	case reflect.Bool:
		if v.IsBool() {
			return v
		}
		return resource.NewProperty(false)
	case reflect.Int, reflect.Int64, reflect.Float32, reflect.Float64:
		if v.IsNumber() {
			return v
		}
		return resource.NewProperty(0.0)
	default:
		return v
	}
}

func plainArray(v resource.PropertyValue, elem reflect.Type, align bool) resource.PropertyValue {
	items := []resource.PropertyValue{}
	if v.IsArray() {
		for _, item := range v.ArrayValue() {
			items = append(items, plain(item, elem, align))
		}
	}
	return resource.NewProperty(items)
}

func plainObject(v resource.PropertyValue, elem reflect.Type, align bool) resource.PropertyValue {
	result := resource.PropertyMap{}
	if v.IsObject() {
		for k, item := range v.ObjectValue() {
			result[k] = plain(item, elem, align)
		}
	}
	return resource.NewProperty(result)
}

type taggedField struct {
	name     string
	optional bool
	typ      reflect.Type
}

// taggedFields lists the `pulumi:"name[,optional]"` fields of a struct,
// including those of embedded structs.
func taggedFields(t reflect.Type) []taggedField {
	var fields []taggedField
	for _, f := range reflect.VisibleFields(t) {
		tag := f.Tag.Get("pulumi")
		if tag == "" || f.Anonymous {
			continue
		}
		parts := strings.Split(tag, ",")
		if parts[0] == "-" {
			continue
		}
		optional := false
		for _, part := range parts[1:] {
			optional = optional || part == "optional"
		}
		fields = append(fields, taggedField{name: parts[0], optional: optional, typ: f.Type})
	}
	return fields
}

// decode maps inputs onto a new T with the SDK's mapper. Problems with the
// inputs come back as check failures; keys in skip are left to the caller.
func decode[T any](inputs resource.PropertyMap, skip ...string) (*T, []*pulumirpc.CheckFailure, error) {
	target := new(T)
	m := plain(resource.NewProperty(inputs), reflect.TypeFor[T](), false).ObjectValue()
	for _, key := range skip {
		delete(m, resource.PropertyKey(key))
	}
	mappingErr := mapper.New(nil).Decode(m.Mappable(), target)
	if mappingErr == nil {
		return target, nil, nil
	}
	var failures []*pulumirpc.CheckFailure
	for _, failure := range mappingErr.Failures() {
		fieldErr, ok := failure.(mapper.FieldError)
		if !ok {
			return target, failures, fmt.Errorf("unknown mapper error: %w", failure)
		}
		failures = append(failures, &pulumirpc.CheckFailure{Property: fieldErr.Field(), Reason: fieldErr.Reason()})
	}
	return target, failures, nil
}

// decodeKnown decodes inputs that must be complete (a real create, update
// or delete); failures become an error.
func decodeKnown[T any](inputs resource.PropertyMap, what string, skip ...string) (*T, error) {
	target, failures, err := decode[T](inputs, skip...)
	if err != nil {
		return nil, fmt.Errorf("invalid %s: %w", what, err)
	}
	if len(failures) > 0 {
		reasons := make([]string, len(failures))
		for i, f := range failures {
			reasons[i] = f.Reason
		}
		return nil, fmt.Errorf("invalid %s: %s", what, strings.Join(reasons, "; "))
	}
	return target, nil
}
