package provider

import (
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
)

// applyDefaults fills the declared defaults of absent properties, in props
// and in the objects they hold (a connection and its proxy), keeping every
// secret and unknown wrapper where it was. An unknown object is left
// unknown.
func applyDefaults(m resource.PropertyMap, props []property) resource.PropertyMap {
	out := m.Copy()
	for _, p := range props {
		key := resource.PropertyKey(p.name)
		value, present := out[key]
		if !present {
			if p.defaultValue != nil {
				out[key] = resource.NewPropertyValue(p.defaultValue)
			}
			continue
		}
		t, isObject := lookupObjectType(p.ref)
		if !isObject {
			continue
		}
		inner, w := unwrap(value)
		if w.computed || !inner.IsObject() {
			continue
		}
		out[key] = w.rewrap(resource.NewProperty(applyDefaults(inner.ObjectValue(), t.properties)))
	}
	return out
}

// applySecrets marks the properties declared secret, at any depth (the
// connection, and its password and keys inside it), as secret.
func applySecrets(m resource.PropertyMap, props []property) resource.PropertyMap {
	out := m.Copy()
	for _, p := range props {
		key := resource.PropertyKey(p.name)
		value, present := out[key]
		if !present {
			continue
		}
		if t, isObject := lookupObjectType(p.ref); isObject {
			inner, w := unwrap(value)
			if inner.IsObject() {
				value = w.rewrap(resource.NewProperty(applySecrets(inner.ObjectValue(), t.properties)))
			}
		}
		if p.secret {
			value = makeSecret(value)
		}
		out[key] = value
	}
	return out
}

// markOutputs gives outputs the secret and unknown flags the upstream
// framework gives them. In a preview, an output that does not simply mirror
// an input is unknown on create, and on update when any input is unknown or
// differs from the old state. An output is secret when it is, or when it
// stands for a same-named input that holds a secret.
func markOutputs(outputs, oldState, inputs resource.PropertyMap, inputNames []string, create, preview bool) {
	for key, value := range outputs {
		input, hasInput := inputs[key]
		mirrorsInput := hasInput && sameValue(input, value)
		if preview && !isComputed(value) && !mirrorsInput {
			if create || inputsMoved(oldState, inputs, inputNames) {
				value = makeComputed(value)
			}
		}
		if !isSecret(value) && !(hasInput && sameValue(input, value)) && hasInput && input.ContainsSecrets() {
			value = makeSecret(value)
		}
		outputs[key] = value
	}
}

func inputsMoved(oldState, inputs resource.PropertyMap, names []string) bool {
	for _, name := range names {
		key := resource.PropertyKey(name)
		input := inputs[key]
		old, hasOld := oldState[key]
		if isComputed(input) || (hasOld && !sameValue(input, old)) {
			return true
		}
	}
	return false
}

func propertyNames(props []property) []string {
	names := make([]string, len(props))
	for i, p := range props {
		names[i] = p.name
	}
	return names
}
