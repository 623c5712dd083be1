// Package sshtest is an SSH server on 127.0.0.1 for the provider's tests.
// It runs exec requests with /bin/sh on this machine, serves the sftp
// subsystem on the real file system, forwards direct-tcpip channels (a jump
// host), and refuses env requests for names outside its AcceptEnv, as
// OpenSSH's sshd does.
package sshtest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"testing"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// Options configure a Server.
type Options struct {
	// Password accepted for any user ("" accepts none).
	Password string
	// AuthorizedKeys are accepted for any user.
	AuthorizedKeys []ssh.PublicKey
	// AcceptEnv lists the variable names env requests may set.
	AcceptEnv []string
	// DropFirst closes that many TCP connections at once, before any SSH
	// handshake, as a host that is still booting might.
	DropFirst int
}

// Exec is one command the server ran.
type Exec struct {
	User    string
	Command string
	Env     map[string]string // what env requests set
	Stdin   string
}

// Server is a running test SSH server.
type Server struct {
	Host    string
	Port    int
	HostKey ssh.PublicKey

	opts     Options
	config   *ssh.ServerConfig
	listener net.Listener

	mu          sync.Mutex
	connections int
	logins      []string // auth method of each successful login
	execs       []Exec
	refusedEnv  []string
}

// Start listens on a free loopback port until the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	_, hostPrivate, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	hostSigner, err := ssh.NewSignerFromKey(hostPrivate)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{opts: opts, HostKey: hostSigner.PublicKey()}
	s.config = &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			for _, allowed := range opts.AuthorizedKeys {
				if bytes.Equal(allowed.Marshal(), key.Marshal()) {
					return &ssh.Permissions{Extensions: map[string]string{"method": "publickey"}}, nil
				}
			}
			return nil, errors.New("key not authorized")
		},
		PasswordCallback: func(_ ssh.ConnMetadata, password []byte) (*ssh.Permissions, error) {
			if opts.Password != "" && string(password) == opts.Password {
				return &ssh.Permissions{Extensions: map[string]string{"method": "password"}}, nil
			}
			return nil, errors.New("wrong password")
		},
	}
	s.config.AddHostKey(hostSigner)

	s.listener, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := s.listener.Addr().(*net.TCPAddr)
	s.Host, s.Port = "127.0.0.1", addr.Port
	t.Cleanup(func() { s.listener.Close() })
	go s.serve()
	return s
}

// Options returns the options the server was started with.
func (s *Server) Options() Options { return s.opts }

// Address is host:port.
func (s *Server) Address() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// AuthorizedKey is the host key in authorized_keys form (for hostKey).
func (s *Server) AuthorizedKey() string { return string(ssh.MarshalAuthorizedKey(s.HostKey)) }

// Connections counts the TCP connections accepted, dropped ones included.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connections
}

// Logins lists the authentication method of each successful login.
func (s *Server) Logins() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.logins...)
}

// Execs lists the commands run so far.
func (s *Server) Execs() []Exec {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Exec(nil), s.execs...)
}

// RefusedEnv lists the names of env requests refused so far.
func (s *Server) RefusedEnv() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.refusedEnv...)
}

func (s *Server) serve() {
	for {
		conn, err := s.listener.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.connections++
		drop := s.connections <= s.opts.DropFirst
		s.mu.Unlock()
		if drop {
			conn.Close()
			continue
		}
		go s.handle(conn)
	}
}

func (s *Server) handle(conn net.Conn) {
	serverConn, channels, requests, err := ssh.NewServerConn(conn, s.config)
	if err != nil {
		conn.Close()
		return
	}
	defer serverConn.Close()
	s.mu.Lock()
	s.logins = append(s.logins, serverConn.Permissions.Extensions["method"])
	s.mu.Unlock()
	go ssh.DiscardRequests(requests)
	for newChannel := range channels {
		switch newChannel.ChannelType() {
		case "session":
			go s.session(serverConn.User(), newChannel)
		case "direct-tcpip":
			go forward(newChannel)
		default:
			_ = newChannel.Reject(ssh.UnknownChannelType, "unsupported channel type")
		}
	}
}

func (s *Server) accepts(name string) bool {
	for _, allowed := range s.opts.AcceptEnv {
		if allowed == name {
			return true
		}
	}
	return false
}

func (s *Server) session(user string, newChannel ssh.NewChannel) {
	channel, requests, err := newChannel.Accept()
	if err != nil {
		return
	}
	defer channel.Close()
	env := map[string]string{}
	for req := range requests {
		switch req.Type {
		case "env":
			var payload struct{ Name, Value string }
			if ssh.Unmarshal(req.Payload, &payload) != nil || !s.accepts(payload.Name) {
				s.mu.Lock()
				s.refusedEnv = append(s.refusedEnv, payload.Name)
				s.mu.Unlock()
				_ = req.Reply(false, nil)
				continue
			}
			env[payload.Name] = payload.Value
			_ = req.Reply(true, nil)
		case "exec":
			var payload struct{ Command string }
			if ssh.Unmarshal(req.Payload, &payload) != nil {
				_ = req.Reply(false, nil)
				return
			}
			_ = req.Reply(true, nil)
			s.exec(user, payload.Command, env, channel)
			return
		case "subsystem":
			var payload struct{ Name string }
			if ssh.Unmarshal(req.Payload, &payload) != nil || payload.Name != "sftp" {
				_ = req.Reply(false, nil)
				return
			}
			_ = req.Reply(true, nil)
			server, err := sftp.NewServer(channel)
			if err != nil {
				return
			}
			_ = server.Serve()
			return
		default:
			_ = req.Reply(false, nil)
		}
	}
}

func (s *Server) exec(user, command string, env map[string]string, channel ssh.Channel) {
	var stdin bytes.Buffer
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	for name, value := range env {
		cmd.Env = append(cmd.Env, name+"="+value)
	}
	cmd.Stdin = io.TeeReader(channel, &stdin)
	cmd.Stdout = channel
	cmd.Stderr = channel.Stderr()
	status := 0
	if err := cmd.Run(); err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) && exitErr.ExitCode() >= 0 {
			status = exitErr.ExitCode()
		} else {
			status = 255
		}
	}
	s.mu.Lock()
	s.execs = append(s.execs, Exec{User: user, Command: command, Env: env, Stdin: stdin.String()})
	s.mu.Unlock()
	_ = channel.CloseWrite()
	exitStatus := make([]byte, 4)
	binary.BigEndian.PutUint32(exitStatus, uint32(status))
	_, _ = channel.SendRequest("exit-status", false, exitStatus)
}

func forward(newChannel ssh.NewChannel) {
	var target struct {
		Host       string
		Port       uint32
		OriginHost string
		OriginPort uint32
	}
	if ssh.Unmarshal(newChannel.ExtraData(), &target) != nil {
		_ = newChannel.Reject(ssh.ConnectionFailed, "bad direct-tcpip request")
		return
	}
	conn, err := net.Dial("tcp", net.JoinHostPort(target.Host, strconv.Itoa(int(target.Port))))
	if err != nil {
		_ = newChannel.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	channel, requests, err := newChannel.Accept()
	if err != nil {
		conn.Close()
		return
	}
	go ssh.DiscardRequests(requests)
	go func() {
		_, _ = io.Copy(conn, channel)
		conn.Close()
	}()
	_, _ = io.Copy(channel, conn)
	channel.Close()
}
