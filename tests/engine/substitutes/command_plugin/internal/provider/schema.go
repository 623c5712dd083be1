package provider

import "encoding/json"

// Schema returns the package schema document for version.
func Schema(version string) ([]byte, error) {
	types := map[string]any{}
	for _, t := range objectTypes {
		props, required := propertiesJSON(t.properties)
		types[t.token] = map[string]any{
			"description": t.description,
			"type":        "object",
			"properties":  props,
			"required":    required,
		}
	}
	for _, e := range enumTypes {
		values := make([]map[string]any, len(e.values))
		for i, v := range e.values {
			values[i] = map[string]any{"value": v.value, "description": v.description}
		}
		types[e.token] = map[string]any{"type": "string", "enum": values}
	}

	resources := map[string]any{}
	for _, r := range resourceSpecs {
		inputProps, requiredInputs := propertiesJSON(r.inputs)
		allProps, required := propertiesJSON(append(append([]property(nil), r.inputs...), r.outputs...))
		spec := map[string]any{
			"description":     r.description,
			"properties":      allProps,
			"required":        required,
			"inputProperties": inputProps,
		}
		if len(requiredInputs) > 0 {
			spec["requiredInputs"] = requiredInputs
		}
		if r.deprecation != "" {
			spec["deprecationMessage"] = r.deprecation
		}
		resources[r.token] = spec
	}

	runInputs, runRequiredInputs := propertiesJSON(localRunSpec.inputs)
	runOutputs, runRequired := propertiesJSON(append(append([]property(nil), localRunSpec.inputs...),
		localRunSpec.outputs...))
	functions := map[string]any{
		localRunToken: map[string]any{
			"description": localRunSpec.description,
			"inputs":      map[string]any{"type": "object", "properties": runInputs, "required": runRequiredInputs},
			"outputs":     map[string]any{"type": "object", "properties": runOutputs, "required": runRequired},
		},
	}

	doc := map[string]any{
		"name":        packageName,
		"displayName": "Command",
		"version":     version,
		"description": "Runs commands and scripts locally or over SSH as part of the Pulumi resource model.",
		"keywords":    []string{"pulumi", "command", "category/utility", "kind/native"},
		"homepage":    "https://pulumi.com",
		"license":     "Apache-2.0",
		"repository":  "https://github.com/pulumi/pulumi-command",
		"publisher":   "Pulumi",
		"logoUrl":     "https://raw.githubusercontent.com/pulumi/pulumi-command/master/assets/logo.svg",
		"language": map[string]any{
			"csharp": map[string]any{"packageReferences": map[string]any{"Pulumi": "3.*"}, "respectSchemaVersion": true},
			"go": map[string]any{
				"generateResourceContainerTypes": true,
				"importBasePath":                 "github.com/pulumi/pulumi-command/sdk/go/command",
				"respectSchemaVersion":           true,
			},
			"java": map[string]any{
				"buildFiles": "gradle",
				"dependencies": map[string]any{
					"com.google.code.findbugs:jsr305": "3.0.2",
					"com.google.code.gson:gson":       "2.8.9",
					"com.pulumi:pulumi":               "1.0.0",
				},
				"gradleNexusPublishPluginVersion": "2.0.0",
			},
			"nodejs": map[string]any{"respectSchemaVersion": true},
			"python": map[string]any{"pyproject": map[string]any{"enabled": true}, "respectSchemaVersion": true},
		},
		"config":    map[string]any{},
		"types":     types,
		"provider":  map[string]any{},
		"resources": resources,
		"functions": functions,
	}
	return json.MarshalIndent(doc, "", "  ")
}

// propertiesJSON renders properties and the names of the required ones, in
// the order given.
func propertiesJSON(props []property) (map[string]any, []string) {
	out := map[string]any{}
	required := []string{}
	for _, p := range props {
		out[p.name] = propertyJSON(p)
		if p.required {
			required = append(required, p.name)
		}
	}
	return out, required
}

func propertyJSON(p property) map[string]any {
	out := map[string]any{}
	if p.description != "" {
		out["description"] = p.description
	}
	if p.ref != "" {
		out["$ref"] = p.ref
	} else {
		out["type"] = p.typ
	}
	if p.items != nil {
		out["items"] = propertyJSON(*p.items)
	}
	if p.additional != nil {
		out["additionalProperties"] = propertyJSON(*p.additional)
	}
	if p.secret {
		out["secret"] = true
	}
	if p.defaultValue != nil {
		out["default"] = p.defaultValue
	}
	if p.replaceOnChanges {
		out["replaceOnChanges"] = true
	}
	return out
}
