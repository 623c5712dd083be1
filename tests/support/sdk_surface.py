"""What a generated Pulumi Python SDK asks of its provider, read from the SDK's source.

A Pulumi Python SDK is generated from the provider's schema: every resource
class names its type token, every function names the token it invokes, and
every property getter names the property and carries its Python type. This
module reads those facts with `ast` (nothing is imported or run) and compares
them with a Pulumi package schema, so a plugin built here can be checked
against the SDK the program is written against.

Types are compared by class: string, integer, number, boolean, any, asset,
archive, array of X, map of X, or object (whose properties are compared in
turn).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SCALARS = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "Any": "any",
    "Asset": "asset",
    "Archive": "archive",
    "AssetOrArchive": "asset",
}
WRAPPERS = {"Input", "Output", "Optional", "InputType"}
SEQUENCES = {"Sequence", "List", "list"}
MAPPINGS = {"Mapping", "Dict", "dict"}
SCHEMA_REFS = {
    "pulumi.json#/Any": "any",
    "pulumi.json#/Asset": "asset",
    "pulumi.json#/Archive": "archive",
    "pulumi.json#/Json": "any",
}


@dataclass(frozen=True)
class Shape:
    """A type reduced to its class; `element` for arrays and maps, `ref` for objects."""

    kind: str
    element: Shape | None = None
    ref: str | None = None

    def describe(self) -> str:
        if self.kind in ("array", "map") and self.element is not None:
            return f"{self.kind} of {self.element.describe()}"
        return self.kind


@dataclass
class PythonType:
    """A class of the SDK with property getters: a resource, an args class, a result, a type."""

    module: str
    name: str
    properties: dict[str, ast.expr] = field(default_factory=dict)


@dataclass
class SdkResource:
    token: str
    outputs: PythonType
    inputs: PythonType | None
    state: PythonType | None


@dataclass
class SdkFunction:
    token: str
    inputs: dict[str, ast.expr]
    result: PythonType | None


@dataclass
class SdkConfigKey:
    name: str
    annotation: ast.expr
    environment: tuple[str, ...]


@dataclass
class Sdk:
    resources: dict[str, SdkResource]
    functions: dict[str, SdkFunction]
    config: dict[str, SdkConfigKey]
    classes: dict[tuple[str, str], PythonType]

    def find_class(self, module: str, reference: str) -> PythonType | None:
        """The class a string annotation such as 'outputs.InstanceNetwork' names."""
        name = reference.rsplit(".", 1)[-1]
        if (module, name) in self.classes:
            return self.classes[(module, name)]
        candidates = [cls for (_, cls_name), cls in self.classes.items() if cls_name == name]
        return candidates[0] if len(candidates) == 1 else None


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _decorator_call(node: ast.FunctionDef | ast.ClassDef, name: str) -> ast.expr | None:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if _dotted(target) == name:
            return decorator
    return None


def _getter_name(function: ast.FunctionDef) -> str | None:
    """The Pulumi property name of a `@pulumi.getter` method, or None if it is not one."""
    decorator = _decorator_call(function, "pulumi.getter")
    if decorator is None:
        return None
    if isinstance(decorator, ast.Call):
        for keyword in decorator.keywords:
            if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                return str(keyword.value.value)
    return function.name


def _getters(cls: ast.ClassDef) -> dict[str, ast.expr]:
    properties = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.returns is not None:
            name = _getter_name(node)
            if name is not None and not any(
                _dotted(d.func if isinstance(d, ast.Call) else d).endswith(".setter")
                for d in node.decorator_list
            ):
                properties[name] = node.returns
    return properties


def _type_token(cls: ast.ClassDef) -> str | None:
    decorator = _decorator_call(cls, "pulumi.type_token")
    if isinstance(decorator, ast.Call) and decorator.args:
        argument = decorator.args[0]
        if isinstance(argument, ast.Constant):
            return str(argument.value)
    return None


def _module_of(package_dir: Path, path: Path) -> str:
    parent = path.parent.relative_to(package_dir)
    return "index" if str(parent) == "." else str(parent).replace("/", ".")


def _invoked_token(function: ast.FunctionDef) -> tuple[str, str | None] | None:
    """The token `pulumi.runtime.invoke` is called with, and the result class's name."""
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and _dotted(node.func) == "pulumi.runtime.invoke":
            token = node.args[0]
            result = None
            for keyword in node.keywords:
                if keyword.arg == "typ":
                    result = _dotted(keyword.value)
            if isinstance(token, ast.Constant):
                return str(token.value), result
    return None


def _function_inputs(function: ast.FunctionDef) -> dict[str, ast.expr]:
    """`__args__['networkId'] = network_id` lines, with the parameter's annotation."""
    annotations = {
        argument.arg: argument.annotation
        for argument in function.args.args + function.args.kwonlyargs
        if argument.annotation is not None
    }
    inputs = {}
    for node in function.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Subscript)
            and _dotted(node.targets[0].value) == "__args__"
            and isinstance(node.targets[0].slice, ast.Constant)
            and isinstance(node.value, ast.Name)
            and node.value.id in annotations
        ):
            inputs[str(node.targets[0].slice.value)] = annotations[node.value.id]
    return inputs


def _config_keys(tree: ast.Module) -> Iterator[SdkConfigKey]:
    """Keys of config/vars.py: `return __config__.get("region") or _utilities.get_env(...)`."""
    for cls in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        for function in cls.body:
            if not isinstance(function, ast.FunctionDef) or function.returns is None:
                continue
            key = None
            environment: list[str] = []
            for node in ast.walk(function):
                if not isinstance(node, ast.Call):
                    continue
                called = _dotted(node.func)
                arguments = [a.value for a in node.args if isinstance(a, ast.Constant)]
                if called.startswith("__config__.get") and arguments:
                    key = str(arguments[0])
                elif called.startswith("_utilities.get_env"):
                    environment.extend(str(a) for a in arguments)
            if key is not None:
                yield SdkConfigKey(key, function.returns, tuple(environment))


def read_sdk(package_dir: Path) -> Sdk:
    """Every resource, function, config key and property type of the SDK in package_dir."""
    classes: dict[tuple[str, str], PythonType] = {}
    resource_classes: list[tuple[str, str, ast.ClassDef]] = []
    functions: dict[str, SdkFunction] = {}
    pending_results: dict[str, tuple[str, str | None]] = {}
    config: dict[str, SdkConfigKey] = {}

    for path in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        module = _module_of(package_dir, path)
        if path.relative_to(package_dir).as_posix() == "config/vars.py":
            config.update((key.name, key) for key in _config_keys(tree))
            continue
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                classes[(module, node.name)] = PythonType(module, node.name, _getters(node))
                token = _type_token(node)
                if token is not None:
                    resource_classes.append((module, token, node))
            elif isinstance(node, ast.FunctionDef) and not node.name.endswith("_output"):
                invoked = _invoked_token(node)
                if invoked is not None:
                    token, result = invoked
                    functions[token] = SdkFunction(token, _function_inputs(node), None)
                    pending_results[token] = (module, result)

    sdk = Sdk({}, functions, config, classes)
    for token, (module, result) in pending_results.items():
        if result is not None:
            functions[token].result = sdk.find_class(module, result)
    for module, token, node in resource_classes:
        sdk.resources[token] = SdkResource(
            token=token,
            outputs=classes[(module, node.name)],
            inputs=classes.get((module, f"{node.name}Args")),
            state=classes.get((module, f"_{node.name}State")),
        )
    return sdk


def sdk_shape(annotation: ast.expr) -> Shape:
    """The class of a Python annotation such as pulumi.Output[Optional[Sequence[str]]]."""
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        inner = annotation.value
        try:
            return sdk_shape(ast.parse(inner, mode="eval").body)
        except SyntaxError:
            return Shape("object", ref=inner)
    if isinstance(annotation, ast.Subscript):
        outer = _dotted(annotation.value).rsplit(".", 1)[-1]
        inner = annotation.slice
        if outer in WRAPPERS:
            return sdk_shape(inner)
        if outer in SEQUENCES:
            return Shape("array", element=sdk_shape(inner))
        if outer in MAPPINGS and isinstance(inner, ast.Tuple):
            return Shape("map", element=sdk_shape(inner.elts[1]))
        if outer == "Union" and isinstance(inner, ast.Tuple):
            shapes = {sdk_shape(element) for element in inner.elts}
            # Input types come as a class and its TypedDict twin: one object.
            objects = {s for s in shapes if s.kind == "object"}
            if objects and len(objects) == len(shapes):
                return sorted(objects, key=lambda s: s.ref or "")[0]
            return shapes.pop() if len(shapes) == 1 else Shape("union")
    if isinstance(annotation, ast.Name | ast.Attribute):
        name = _dotted(annotation).rsplit(".", 1)[-1]
        if name in SCALARS:
            return Shape(SCALARS[name])
        return Shape("object", ref=_dotted(annotation))
    return Shape("unknown")


def schema_shape(spec: dict) -> Shape:
    """The class of a property's type in a Pulumi package schema."""
    if "$ref" in spec:
        ref = spec["$ref"]
        if ref in SCHEMA_REFS:
            return Shape(SCHEMA_REFS[ref])
        return Shape("object", ref=ref.removeprefix("#/types/"))
    kind = spec.get("type")
    if kind == "array":
        return Shape("array", element=schema_shape(spec.get("items", {})))
    if kind == "object":
        return Shape("map", element=schema_shape(spec.get("additionalProperties", {})))
    if kind in ("string", "integer", "number", "boolean"):
        return Shape(kind)
    if "oneOf" in spec:
        return Shape("union")
    return Shape("any")


@dataclass
class Comparison:
    """Compares SDK classes with schema property maps, recursing into object types."""

    sdk: Sdk
    schema: dict
    mismatches: list[str] = field(default_factory=list)
    _seen: set[tuple[str, str, str]] = field(default_factory=set)

    def properties(
        self, where: str, module: str, sdk_properties: dict[str, ast.expr], schema_properties: dict
    ) -> None:
        for name, annotation in sorted(sdk_properties.items()):
            if name not in schema_properties:
                self.mismatches.append(f"{where}.{name}: in the SDK, not served by the plugin")
                continue
            self.shapes(
                f"{where}.{name}",
                module,
                sdk_shape(annotation),
                schema_shape(schema_properties[name]),
            )

    def shapes(self, where: str, module: str, ours: Shape, theirs: Shape) -> None:
        if ours.kind != theirs.kind:
            self.mismatches.append(
                f"{where}: the SDK has {ours.describe()}, the plugin {theirs.describe()}"
            )
            return
        if ours.element is not None and theirs.element is not None:
            self.shapes(f"{where}[]", module, ours.element, theirs.element)
        if ours.kind == "object" and ours.ref and theirs.ref:
            self.object_type(where, module, ours.ref, theirs.ref)

    def object_type(self, where: str, module: str, python_ref: str, schema_ref: str) -> None:
        key = (module, python_ref, schema_ref)
        if key in self._seen:
            return
        self._seen.add(key)
        cls = self.sdk.find_class(module, python_ref)
        spec = self.schema.get("types", {}).get(schema_ref)
        if cls is None:
            self.mismatches.append(f"{where}: the SDK class {python_ref} was not found")
            return
        if spec is None:
            self.mismatches.append(f"{where}: the plugin's schema has no type {schema_ref}")
            return
        self.properties(
            f"{where}<{schema_ref}>", cls.module, cls.properties, spec.get("properties", {})
        )


def compare_resource(sdk: Sdk, schema: dict, token: str) -> list[str]:
    """Mismatches between one SDK resource (inputs, outputs, state) and the schema."""
    comparison = Comparison(sdk, schema)
    resource = sdk.resources[token]
    spec = (
        schema["provider"]
        if token.startswith("pulumi:providers:")
        else schema.get("resources", {}).get(token)
    )
    if spec is None:
        return [f"{token}: in the SDK, not served by the plugin"]
    module = resource.outputs.module
    comparison.properties(
        f"{token} output", module, resource.outputs.properties, spec.get("properties", {})
    )
    if resource.inputs is not None:
        comparison.properties(
            f"{token} input", module, resource.inputs.properties, spec.get("inputProperties", {})
        )
    if resource.state is not None:
        comparison.properties(
            f"{token} state",
            module,
            resource.state.properties,
            spec.get("stateInputs", {}).get("properties", {}),
        )
    return comparison.mismatches


def compare_function(sdk: Sdk, schema: dict, token: str) -> list[str]:
    """Mismatches between one SDK function (arguments and result) and the schema."""
    comparison = Comparison(sdk, schema)
    function = sdk.functions[token]
    spec = schema.get("functions", {}).get(token)
    if spec is None:
        return [f"{token}: in the SDK, not served by the plugin"]
    module = token.split(":")[1].split("/")[0]
    comparison.properties(
        f"{token} argument", module, function.inputs, spec.get("inputs", {}).get("properties", {})
    )
    if function.result is None:
        comparison.mismatches.append(f"{token}: the SDK's result class was not found")
    else:
        comparison.properties(
            f"{token} result",
            function.result.module,
            function.result.properties,
            spec.get("outputs", {}).get("properties", {}),
        )
    return comparison.mismatches


def compare_config(sdk: Sdk, schema: dict) -> list[str]:
    """Mismatches between the SDK's config keys (type and environment defaults) and the schema."""
    comparison = Comparison(sdk, schema)
    variables = schema.get("config", {}).get("variables", {})
    for key in sorted(sdk.config.values(), key=lambda k: k.name):
        if key.name not in variables:
            comparison.mismatches.append(f"config {key.name}: in the SDK, not served by the plugin")
            continue
        spec = variables[key.name]
        ours, theirs = sdk_shape(key.annotation), schema_shape(spec)
        # The SDK's config module hands structured values over as their JSON text.
        if not (ours.kind == "string" and theirs.kind in ("map", "array")):
            comparison.shapes(f"config {key.name}", "config", ours, theirs)
        served = tuple(spec.get("defaultInfo", {}).get("environment", ()))
        if served != key.environment:
            comparison.mismatches.append(
                f"config {key.name}: the SDK falls back to {list(key.environment)}, "
                f"the plugin to {list(served)}"
            )
    return comparison.mismatches
