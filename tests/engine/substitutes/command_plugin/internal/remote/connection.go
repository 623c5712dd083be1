package remote

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/retry"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"chipersist.test/pulumi-resource-command/internal/hostlog"
)

// Defaults the provider's Check fills in; Dial falls back to the dial limit
// when a state written without it is used.
const (
	DefaultUser           = "root"
	DefaultPort           = 22
	DefaultDialErrorLimit = 10
	DefaultPerDialTimeout = 15
	unlimitedDials        = -1
	agentSocketVariable   = "SSH_AUTH_SOCK"
)

// clientConfig builds the SSH client configuration. Authentication methods
// are offered in this order: the private key, the password (also answering
// keyboard-interactive prompts), then the agent. The agent's socket
// (agentSocketPath, else SSH_AUTH_SOCK whenever it is set) is dialled here,
// before any connection, even when a key or password is given: a socket
// that cannot be reached fails the whole operation at once, without retries.
func (c *connectionBase) clientConfig() (*ssh.ClientConfig, error) {
	config := &ssh.ClientConfig{
		User:            deref(c.User),
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), //nolint:gosec // upstream's behaviour without hostKey
		Timeout:         time.Duration(derefInt(c.PerDialTimeout)) * time.Second,
	}
	if c.HostKey != nil {
		hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(*c.HostKey))
		if err != nil {
			return nil, fmt.Errorf("failed to parse host key: %w", err)
		}
		config.HostKeyCallback = ssh.FixedHostKey(hostKey)
		config.HostKeyAlgorithms = []string{hostKey.Type()}
	}

	if c.PrivateKey != nil {
		var signer ssh.Signer
		var err error
		if c.PrivateKeyPassword != nil {
			signer, err = ssh.ParsePrivateKeyWithPassphrase([]byte(*c.PrivateKey), []byte(*c.PrivateKeyPassword))
		} else {
			signer, err = ssh.ParsePrivateKey([]byte(*c.PrivateKey))
		}
		if err != nil {
			return nil, err
		}
		config.Auth = append(config.Auth, ssh.PublicKeys(signer))
	}

	if c.Password != nil {
		password := *c.Password
		config.Auth = append(config.Auth,
			ssh.Password(password),
			ssh.KeyboardInteractive(func(_, _ string, questions []string, _ []bool) ([]string, error) {
				answers := make([]string, len(questions))
				for i := range answers {
					answers[i] = password
				}
				return answers, nil
			}))
	}

	socket := ""
	if c.AgentSocketPath != nil {
		socket = *c.AgentSocketPath
	} else {
		socket = os.Getenv(agentSocketVariable)
	}
	if c.AgentSocketPath != nil || socket != "" {
		// The connection to the agent stays open for the provider's lifetime,
		// as upstream's does.
		conn, err := net.Dial("unix", socket)
		if err != nil {
			return nil, err
		}
		config.Auth = append(config.Auth, ssh.PublicKeysCallback(agent.NewClient(conn).Signers))
	}
	return config, nil
}

func (c *connectionBase) endpoint() string {
	port := 0
	if c.Port != nil {
		port = int(*c.Port)
	}
	return net.JoinHostPort(deref(c.Host), strconv.Itoa(port))
}

func (c *connectionBase) dialErrorLimit() int {
	if c.DialErrorLimit == nil {
		return DefaultDialErrorLimit
	}
	return *c.DialErrorLimit
}

// Dial connects and authenticates, retrying every failure (refused, timed
// out, handshake or authentication refused) until dialErrorLimit failures
// have been seen, with the SDK's retry pacing between attempts: 100 ms, then
// 1.5 times longer each time, at most 5 s. With the default limit of 10 that
// is 11 attempts over about 11 s plus the attempts' own time.
func (c *Connection) Dial(ctx context.Context) (*ssh.Client, error) {
	config, err := c.clientConfig()
	if err != nil {
		return nil, err
	}
	endpoint := c.endpoint()
	limit := c.dialErrorLimit()
	if c.Proxy == nil {
		return dialWithRetry(ctx, "Dial", limit, func() (*ssh.Client, error) {
			return ssh.Dial("tcp", endpoint, config)
		})
	}

	proxyConfig, err := c.Proxy.clientConfig()
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	proxyEndpoint := c.Proxy.endpoint()
	proxyClient, err := dialWithRetry(ctx, "Dial proxy", c.Proxy.dialErrorLimit(), func() (*ssh.Client, error) {
		return ssh.Dial("tcp", proxyEndpoint, proxyConfig)
	})
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	tunnel, err := dialWithRetry(ctx, "Dial from proxy", limit, func() (net.Conn, error) {
		return proxyClient.Dial("tcp", endpoint)
	})
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	type handshake struct {
		conn     ssh.Conn
		channels <-chan ssh.NewChannel
		requests <-chan *ssh.Request
	}
	done, err := dialWithRetry(ctx, "Dial", limit, func() (handshake, error) {
		conn, channels, requests, err := ssh.NewClientConn(tunnel, endpoint, config)
		return handshake{conn, channels, requests}, err
	})
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	return ssh.NewClient(done.conn, done.channels, done.requests), nil
}

// dialWithRetry calls attempt until it succeeds or limit failures have been
// seen (-1: no limit). The error then reads "after N failed attempts: <last
// error>", where N is one less than the attempts made, as upstream counts.
func dialWithRetry[T any](ctx context.Context, what string, limit int, attempt func() (T, error)) (T, error) {
	var zero T
	succeeded, result, err := retry.Until(ctx, retry.Acceptor{
		Accept: func(try int, _ time.Duration) (bool, any, error) {
			value, err := attempt()
			if err == nil {
				return true, value, nil
			}
			dials := try + 1
			if limit > unlimitedDials && dials > limit {
				return true, nil, fmt.Errorf("after %d failed attempts: %w", try, err)
			}
			shownLimit := "inf"
			if limit != unlimitedDials {
				shownLimit = strconv.Itoa(limit)
			}
			hostlog.From(ctx).LogStatus(diag.Info,
				fmt.Sprintf("%s %d/%s failed: retrying", what, dials, shownLimit))
			return false, nil, nil
		},
	})
	if succeeded && err == nil {
		return result.(T), nil
	}
	if err == nil {
		err = ctx.Err()
	}
	return zero, err
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func derefInt(i *int) int {
	if i == nil {
		return 0
	}
	return *i
}
