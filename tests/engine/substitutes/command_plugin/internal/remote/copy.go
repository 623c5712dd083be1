package remote

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/pkg/sftp"
	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"

	"chipersist.test/pulumi-resource-command/internal/hostlog"
)

// Path is the local path of a file asset or archive ("" for a text asset).
func (s Source) Path() string {
	if s.Asset != nil {
		return s.Asset.Path
	}
	if s.Archive != nil {
		return s.Archive.Path
	}
	return ""
}

// Hash is the content hash the engine computed for the source.
func (s Source) Hash() string {
	if s.Archive != nil {
		return s.Archive.Hash
	}
	if s.Asset != nil {
		return s.Asset.Hash
	}
	return ""
}

func (s Source) isText() bool { return s.Asset != nil && s.Asset.IsText() }

// CopyToRemote copies in.Source to in.RemotePath over SFTP. Placement:
//
//	source        remote path is a dir   does not exist       is a file
//	dir           <path>/<dir name>/...  <path>/<dir name>/... error
//	dir/ (slash)  <path>/<entries>       <path>/<entries>      error
//	file          <path>/<file name>     <path> (parents made) <path>, overwritten
//	text asset    error                  <path> (parents made) <path>, overwritten
//
// Directories are walked and copied file by file into what exists already
// (nothing remote is removed); archives of other kinds are copied as the
// file they are, never unpacked. File modes are not carried over: new files
// get the SFTP server's default mode.
func CopyToRemote(ctx context.Context, in CopyToRemoteInputs) error {
	if in.Source.isText() {
		hostlog.From(ctx).Log(diag.Debug, fmt.Sprintf("Creating file: %s:%s from text asset",
			deref(in.Connection.Host), in.RemotePath))
	} else {
		hostlog.From(ctx).Log(diag.Debug, fmt.Sprintf("Creating file: %s:%s from local file %s",
			deref(in.Connection.Host), in.RemotePath, in.Source.Path()))
	}

	client, err := in.Connection.Dial(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	sftpClient, err := sftp.NewClient(client, sftp.UseConcurrentWrites(true))
	if err != nil {
		return err
	}
	defer sftpClient.Close()

	if in.Source.isText() {
		return writeText(sftpClient, in.Source.Asset.Text, in.RemotePath)
	}
	return copyPath(sftpClient, in.Source.Path(), in.RemotePath)
}

// statRemote returns nil, nil when path does not exist.
func statRemote(client *sftp.Client, path string) (fs.FileInfo, error) {
	info, err := client.Stat(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("failed to stat remote path %s: %w", path, err)
	}
	return info, nil
}

func writeText(client *sftp.Client, text, destination string) error {
	info, err := statRemote(client, destination)
	if err != nil {
		return err
	}
	if info != nil && info.IsDir() {
		return fmt.Errorf("remote path %s is a directory; when using a text asset, remotePath must be a file path", destination)
	}
	if err := client.MkdirAll(filepath.Dir(destination)); err != nil {
		return fmt.Errorf("failed to create parent directories for %s: %w", destination, err)
	}
	file, err := client.Create(destination)
	if err != nil {
		return fmt.Errorf("failed to create remote file %s: %w", destination, err)
	}
	defer file.Close()
	if _, err := file.Write([]byte(text)); err != nil {
		return fmt.Errorf("failed to write text content to remote path %s: %w", destination, err)
	}
	return nil
}

func copyPath(client *sftp.Client, source, destination string) error {
	local, err := os.Open(source)
	if err != nil {
		return err
	}
	defer local.Close()
	sourceInfo, err := local.Stat()
	if err != nil {
		return err
	}
	destinationInfo, err := statRemote(client, destination)
	if err != nil {
		return err
	}

	if !sourceInfo.IsDir() {
		target := destination
		switch {
		case destinationInfo != nil && destinationInfo.IsDir():
			target = filepath.Join(destination, filepath.Base(source))
		case destinationInfo == nil:
			if err := client.MkdirAll(filepath.Dir(destination)); err != nil {
				return fmt.Errorf("failed to create parent directories for %s: %w", destination, err)
			}
		}
		return copyFile(client, source, target)
	}

	if destinationInfo == nil {
		if err := client.MkdirAll(destination); err != nil {
			return fmt.Errorf("failed to create remote directory %s: %w", destination, err)
		}
	}
	target := destination
	if !strings.HasSuffix(source, "/") {
		target = filepath.Join(destination, filepath.Base(source))
		info, err := statRemote(client, target)
		if err != nil {
			return err
		}
		if info != nil && !info.IsDir() {
			return fmt.Errorf("remote path %s exists but is not a directory", target)
		}
		if info == nil {
			if err := client.Mkdir(target); err != nil {
				return fmt.Errorf("failed to create remote directory %s: %w", target, err)
			}
		}
	}
	return copyTree(client, source, target)
}

func copyFile(client *sftp.Client, source, destination string) error {
	local, err := os.Open(source)
	if err != nil {
		return err
	}
	defer local.Close()
	remote, err := client.Create(destination)
	if err != nil {
		return fmt.Errorf("failed to create remote file %s: %w", destination, err)
	}
	defer remote.Close()
	if _, err := remote.ReadFrom(local); err != nil {
		return fmt.Errorf("failed to copy file %s to remote path %s: %w", source, destination, err)
	}
	return nil
}

// copyTree copies the tree under source into destination, one file at a
// time, making the directories that are missing.
func copyTree(client *sftp.Client, source, destination string) error {
	return fs.WalkDir(os.DirFS(source), ".", func(name string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		target := filepath.Join(destination, name)
		if !entry.IsDir() {
			return copyFile(client, filepath.Join(source, name), target)
		}
		info, err := statRemote(client, target)
		if err != nil {
			return err
		}
		switch {
		case info == nil:
			if err := client.Mkdir(target); err != nil {
				return fmt.Errorf("failed to create remote directory %s: %w", target, err)
			}
		case !info.IsDir():
			return fmt.Errorf("remote path %s exists but is not a directory", target)
		}
		return nil
	})
}

// CopyFile is the deprecated CopyFile resource's create: localPath copied to
// remotePath exactly (no directory handling, no parents made).
func CopyFile(ctx context.Context, in CopyFileInputs) error {
	hostlog.From(ctx).Log(diag.Debug, fmt.Sprintf("Creating file: %s:%s from local file %s",
		deref(in.Connection.Host), in.RemotePath, in.LocalPath))
	local, err := os.Open(in.LocalPath)
	if err != nil {
		return err
	}
	defer local.Close()
	client, err := in.Connection.Dial(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	sftpClient, err := sftp.NewClient(client)
	if err != nil {
		return err
	}
	defer sftpClient.Close()
	remote, err := sftpClient.Create(in.RemotePath)
	if err != nil {
		return err
	}
	_, err = remote.ReadFrom(local)
	return err
}
