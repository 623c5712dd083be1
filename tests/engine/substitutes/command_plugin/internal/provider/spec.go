package provider

// The provider's types, resources and function as data: the schema is
// generated from these, and Check applies their defaults and secrets. The
// shapes, names, defaults, secret and replaceOnChanges markers are those of
// pulumi-command 1.2.1's schema; the descriptions are this project's own.

const (
	packageName         = "command"
	connectionToken     = "command:remote:Connection"
	proxyToken          = "command:remote:ProxyConnection"
	remoteLoggingToken  = "command:remote:Logging"
	localLoggingToken   = "command:local:Logging"
	localCommandToken   = "command:local:Command"
	remoteCommandToken  = "command:remote:Command"
	copyToRemoteToken   = "command:remote:CopyToRemote"
	copyFileToken       = "command:remote:CopyFile"
	localRunToken       = "command:local:run"
	frameworkVersionKey = "__pulumi-go-provider-version"
	// frameworkVersion is what pulumi-command 1.2.1's framework
	// (pulumi-go-provider v1.3.0, whose embedded version file says 1.2.0)
	// writes into the provider's checked config.
	frameworkVersion = "1.2.0"
)

type property struct {
	name             string
	description      string
	typ              string // string, number, integer, boolean, array, object; "" with ref
	ref              string
	items            *property // array element
	additional       *property // map value
	secret           bool
	defaultValue     any
	replaceOnChanges bool
	required         bool
}

type enumValue struct{ value, description string }

type objectType struct {
	token       string
	description string
	properties  []property
}

type enumType struct {
	token  string
	values []enumValue
}

type resourceSpec struct {
	token       string
	description string
	deprecation string
	inputs      []property
	outputs     []property // outputs that are not inputs
}

func stringProperty(name, description string) property {
	return property{name: name, description: description, typ: "string"}
}

func stringArray(name, description string) property {
	return property{name: name, description: description, typ: "array", items: &property{typ: "string"}}
}

func stringMap(name, description string) property {
	return property{name: name, description: description, typ: "object", additional: &property{typ: "string"}}
}

func triggersProperty(description string, replace bool) property {
	return property{
		name: "triggers", description: description, typ: "array",
		items: &property{ref: "pulumi.json#/Any"}, replaceOnChanges: replace,
	}
}

func connectionFields(target string) []property {
	return []property{
		{name: "agentSocketPath", typ: "string",
			description: "Path of the SSH agent's socket. When unset, SSH_AUTH_SOCK is used whenever it is set."},
		{name: "dialErrorLimit", typ: "integer", defaultValue: 10,
			description: "How many failed dial attempts are tolerated; -1 means no limit. Defaults to 10."},
		{name: "host", typ: "string", required: true, description: "Address of the " + target + "."},
		{name: "hostKey", typ: "string",
			description: "Expected host key (authorized_keys format). When unset, any host key is accepted."},
		{name: "password", typ: "string", secret: true, description: "Password for the " + target + "."},
		{name: "perDialTimeout", typ: "integer", defaultValue: 15,
			description: "Seconds allowed for each dial attempt; 0 means no limit. Defaults to 15."},
		{name: "port", typ: "number", defaultValue: 22, description: "SSH port of the " + target + ". Defaults to 22."},
		{name: "privateKey", typ: "string", secret: true,
			description: "Contents of the private key to authenticate with; tried before the password."},
		{name: "privateKeyPassword", typ: "string", secret: true,
			description: "Passphrase of an encrypted private key."},
		{name: "user", typ: "string", defaultValue: "root",
			description: "User to log in as on the " + target + ". Defaults to root."},
	}
}

func connectionType() objectType {
	fields := connectionFields("remote host")
	withProxy := make([]property, 0, len(fields)+1)
	for _, f := range fields {
		withProxy = append(withProxy, f)
		if f.name == "privateKeyPassword" {
			withProxy = append(withProxy, property{name: "proxy", ref: "#/types/" + proxyToken,
				description: "Connection settings of the bastion host to go through."})
		}
	}
	return objectType{token: connectionToken, description: "How to connect to a remote host.", properties: withProxy}
}

func proxyType() objectType {
	return objectType{token: proxyToken, description: "How to connect to the bastion host in front of a remote host.",
		properties: connectionFields("bastion host")}
}

var objectTypes = []objectType{connectionType(), proxyType()}

func loggingEnum(token string) enumType {
	return enumType{token: token, values: []enumValue{
		{"stdout", "Log stdout, not stderr."},
		{"stderr", "Log stderr, not stdout."},
		{"stdoutAndStderr", "Log both stdout and stderr."},
		{"none", "Log neither."},
	}}
}

var enumTypes = []enumType{loggingEnum(localLoggingToken), loggingEnum(remoteLoggingToken)}

func lookupObjectType(ref string) (objectType, bool) {
	for _, t := range objectTypes {
		if ref == "#/types/"+t.token {
			return t, true
		}
	}
	return objectType{}, false
}

const (
	createDescription = "Command run when the resource is created, and when its inputs change and no `update` is given."
	updateDescription = "Command run when the resource's inputs change; `create` is run instead when unset. " +
		"PULUMI_COMMAND_STDOUT and PULUMI_COMMAND_STDERR hold the previous run's output."
	deleteDescription = "Command run when the resource is deleted, with PULUMI_COMMAND_STDOUT and " +
		"PULUMI_COMMAND_STDERR set to the last create or update's output."
	triggersDescription = "Values whose change replaces the resource (the SDK asks the engine to replace on any " +
		"change of triggers[*])."
	stdinDescription   = "Text passed to the command's standard input."
	loggingDescription = "Which of stdout and stderr are streamed to the engine's log while the command runs " +
		"(both when unset). The outputs capture both either way."
	previousOutputDescription = "Whether PULUMI_COMMAND_STDOUT and PULUMI_COMMAND_STDERR carry the previous " +
		"create or update's output into the next run. Defaults to true."
	stdoutDescription = "The command's standard output, less one trailing newline."
	stderrDescription = "The command's standard error, less one trailing newline."
)

func localBaseInputs() []property {
	return []property{
		{name: "addPreviousOutputInEnv", typ: "boolean", description: previousOutputDescription},
		stringArray("archivePaths", "Globs of files (relative to dir) collected into `archive` after the command."),
		stringArray("assetPaths", "Globs of files (relative to dir) collected into `assets` after the command."),
		stringProperty("dir", "Directory the command runs in; the provider's working directory when unset."),
		stringMap("environment", "Environment variables added to the provider's own for the command."),
		stringArray("interpreter", "Program and arguments the command is appended to; [\"/bin/sh\", \"-c\"] when unset."),
		{name: "logging", ref: "#/types/" + localLoggingToken, description: loggingDescription},
		stringProperty("stdin", stdinDescription),
	}
}

func localOutputProperties() []property {
	return []property{
		{name: "archive", ref: "pulumi.json#/Archive", description: "Archive of the files archivePaths selected."},
		{name: "assets", typ: "object", additional: &property{ref: "pulumi.json#/Asset"},
			description: "Files assetPaths selected, keyed by their path relative to dir."},
		{name: "stderr", typ: "string", required: true, description: stderrDescription},
		{name: "stdout", typ: "string", required: true, description: stdoutDescription},
	}
}

func commandInputs() []property {
	return []property{
		stringProperty("create", createDescription),
		stringProperty("delete", deleteDescription),
		triggersProperty(triggersDescription, true),
		stringProperty("update", updateDescription),
	}
}

var remoteConnection = property{name: "connection", ref: "#/types/" + connectionToken, secret: true, required: true,
	description: "How to connect to the remote host."}

var resourceSpecs = []resourceSpec{
	{
		token:       localCommandToken,
		description: "A command run on the machine that runs the deployment, when the resource is created, updated or deleted.",
		inputs:      sortProperties(append(commandInputs(), localBaseInputs()...)),
		outputs:     localOutputProperties(),
	},
	{
		token:       remoteCommandToken,
		description: "A command run over SSH on a remote host, when the resource is created, updated or deleted.",
		inputs: sortProperties(append(commandInputs(),
			property{name: "addPreviousOutputInEnv", typ: "boolean", description: previousOutputDescription},
			remoteConnection,
			stringMap("environment", "Environment variables sent with SSH env requests; sshd refuses names "+
				"its AcceptEnv does not list, and the command then fails."),
			property{name: "logging", ref: "#/types/" + remoteLoggingToken, description: loggingDescription},
			stringProperty("stdin", stdinDescription),
		)),
		outputs: []property{
			{name: "stderr", typ: "string", required: true, description: stderrDescription},
			{name: "stdout", typ: "string", required: true, description: stdoutDescription},
		},
	},
	{
		token:       copyToRemoteToken,
		description: "Copies a local file, directory or text to a remote host over SFTP.",
		inputs: []property{
			remoteConnection,
			{name: "remotePath", typ: "string", required: true,
				description: "Destination on the remote host. An existing directory receives the source inside it " +
					"(a directory source as a subdirectory of its own name unless its path ends in /); " +
					"missing parent directories are made."},
			{name: "source", ref: "pulumi.json#/Asset", required: true,
				description: "A FileAsset, StringAsset or FileArchive. Archive files are copied as they are, not unpacked."},
			triggersProperty("Values whose change replaces the resource.", true),
		},
	},
	{
		token:       copyFileToken,
		description: "Copies a local file to a remote host over SFTP.",
		deprecation: "This resource is deprecated and will be removed in a future release. " +
			"Please use the `CopyToRemote` resource instead.",
		inputs: []property{
			remoteConnection,
			{name: "localPath", typ: "string", required: true, description: "The file to copy."},
			{name: "remotePath", typ: "string", required: true, description: "Destination path on the remote host."},
			triggersProperty("Values whose change replaces the resource.", false),
		},
	},
}

var localRunSpec = resourceSpec{
	token:       localRunToken,
	description: "Runs a local command on every preview and deployment, outside any resource's lifecycle.",
	inputs: sortProperties(append(localBaseInputs(),
		property{name: "command", typ: "string", required: true, description: "The command to run."})),
	outputs: localOutputProperties(),
}

func lookupResourceSpec(token string) (resourceSpec, bool) {
	for _, r := range resourceSpecs {
		if r.token == token {
			return r, true
		}
	}
	return resourceSpec{}, false
}

func sortProperties(props []property) []property {
	sorted := append([]property(nil), props...)
	for i := 1; i < len(sorted); i++ {
		for j := i; j > 0 && sorted[j].name < sorted[j-1].name; j-- {
			sorted[j], sorted[j-1] = sorted[j-1], sorted[j]
		}
	}
	return sorted
}
