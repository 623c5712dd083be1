// Package remote runs commands and copies files over SSH, as pulumi-command
// 1.2.1's command:remote resources do.
//
// The input types are decoded with the Pulumi SDK's mapper; their package
// and type names are part of the messages the mapper gives for bad inputs
// ("Missing required field 'host' on 'remote.Connection'"), which is why they
// carry the names the upstream provider's types have.
package remote

import "github.com/pulumi/pulumi/sdk/v3/go/common/resource"

// Logging says which of the command's streams go to the engine's log.
type Logging string

// ShouldLogStdout is true unless logging names another stream or none;
// unset means both.
func (l *Logging) ShouldLogStdout() bool {
	return l == nil || *l == "stdout" || *l == "stdoutAndStderr"
}

// ShouldLogStderr is the same for stderr.
func (l *Logging) ShouldLogStderr() bool {
	return l == nil || *l == "stderr" || *l == "stdoutAndStderr"
}

// connectionBase holds what a connection and its proxy have in common.
type connectionBase struct {
	User               *string  `pulumi:"user,optional"`
	Password           *string  `pulumi:"password,optional"`
	Host               *string  `pulumi:"host"`
	Port               *float64 `pulumi:"port,optional"`
	PrivateKey         *string  `pulumi:"privateKey,optional"`
	PrivateKeyPassword *string  `pulumi:"privateKeyPassword,optional"`
	AgentSocketPath    *string  `pulumi:"agentSocketPath,optional"`
	DialErrorLimit     *int     `pulumi:"dialErrorLimit,optional"`
	PerDialTimeout     *int     `pulumi:"perDialTimeout,optional"`
	HostKey            *string  `pulumi:"hostKey,optional"`
}

// Connection says how to reach the remote host.
type Connection struct {
	connectionBase
	Proxy *ProxyConnection `pulumi:"proxy,optional"`
}

// ProxyConnection says how to reach the bastion host in front of it.
type ProxyConnection struct {
	connectionBase
}

// CommandInputs are the inputs of command:remote:Command.
type CommandInputs struct {
	Triggers               *[]any            `pulumi:"triggers,optional"`
	Create                 *string           `pulumi:"create,optional"`
	Update                 *string           `pulumi:"update,optional"`
	Delete                 *string           `pulumi:"delete,optional"`
	Stdin                  *string           `pulumi:"stdin,optional"`
	Logging                *Logging          `pulumi:"logging,optional"`
	Connection             *Connection       `pulumi:"connection"`
	Environment            map[string]string `pulumi:"environment,optional"`
	AddPreviousOutputInEnv *bool             `pulumi:"addPreviousOutputInEnv,optional"`
}

// CopyToRemoteInputs are the inputs of command:remote:CopyToRemote, except
// the source, which the mapper cannot decode and is read on its own.
type CopyToRemoteInputs struct {
	Connection *Connection `pulumi:"connection"`
	Triggers   *[]any      `pulumi:"triggers,optional"`
	RemotePath string      `pulumi:"remotePath"`

	// Source is an asset or an archive; exactly one is set once checked.
	Source Source `pulumi:"-"`
}

// Source is CopyToRemote's asset or archive.
type Source struct {
	Asset   *resource.Asset
	Archive *resource.Archive
}

// CopyFileInputs are the inputs of the deprecated command:remote:CopyFile.
type CopyFileInputs struct {
	Connection *Connection `pulumi:"connection"`
	Triggers   *[]any      `pulumi:"triggers,optional"`
	LocalPath  string      `pulumi:"localPath"`
	RemotePath string      `pulumi:"remotePath"`
}
