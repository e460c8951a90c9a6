// Package s3 implements backend.Backend on any S3-compatible object store
// with minio-go. S3 PUTs are atomic (an object is either absent or
// complete) and durable when acknowledged, which is what the backend
// contract asks.
package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/ferrymigrate/ferry/replica/backend"
)

var _ backend.Backend = (*Backend)(nil)

// Config says where the objects go.
type Config struct {
	// Endpoint is host:port of the S3 service, without scheme.
	Endpoint string
	// AccessKey and SecretKey are static credentials.
	AccessKey, SecretKey string
	// Region is the bucket's region; empty lets the client discover it.
	Region string
	// Bucket holds the objects.
	Bucket string
	// Prefix is prepended to every object name, e.g. "ferry/"; optional.
	Prefix string
	// Insecure uses plain HTTP instead of HTTPS.
	Insecure bool
	// CreateBucket creates the bucket if it does not exist.
	CreateBucket bool
}

// Backend is a backend.Backend storing objects in an S3 bucket.
type Backend struct {
	c      *minio.Client
	bucket string
	prefix string
}

// Open connects to the bucket described by cfg and checks that it exists
// (creating it when cfg.CreateBucket is set).
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	if cfg.Endpoint == "" || cfg.Bucket == "" {
		return nil, errors.New("open s3 backend: endpoint and bucket are required")
	}
	if cfg.Prefix != "" && !backend.ValidPrefix(cfg.Prefix) {
		return nil, fmt.Errorf("open s3 backend: invalid prefix %q", cfg.Prefix)
	}
	if cfg.Prefix != "" && !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	c, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure: !cfg.Insecure,
		Region: cfg.Region,
	})
	if err != nil {
		return nil, fmt.Errorf("open s3 backend: %w", err)
	}
	ok, err := c.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("open s3 backend: check bucket %s: %w", cfg.Bucket, err)
	}
	if !ok {
		if !cfg.CreateBucket {
			return nil, fmt.Errorf("open s3 backend: bucket %s does not exist", cfg.Bucket)
		}
		if err := c.MakeBucket(ctx, cfg.Bucket, minio.MakeBucketOptions{Region: cfg.Region}); err != nil {
			return nil, fmt.Errorf("open s3 backend: create bucket %s: %w", cfg.Bucket, err)
		}
	}
	return &Backend{c: c, bucket: cfg.Bucket, prefix: cfg.Prefix}, nil
}

func (b *Backend) key(name string) (string, error) {
	if !backend.ValidName(name) {
		return "", fmt.Errorf("invalid object name %q", name)
	}
	return b.prefix + name, nil
}

// Put stores data under name with a single PUT.
func (b *Backend) Put(ctx context.Context, name string, data []byte) error {
	key, err := b.key(name)
	if err != nil {
		return err
	}
	_, err = b.c.PutObject(ctx, b.bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{
		ContentType:      "application/octet-stream",
		DisableMultipart: true,
	})
	if err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	return nil
}

func notFound(err error) bool {
	code := minio.ToErrorResponse(err).Code
	return code == "NoSuchKey" || code == "NotFound"
}

// Get returns the object's contents or an error wrapping backend.ErrNotFound.
func (b *Backend) Get(ctx context.Context, name string) ([]byte, error) {
	key, err := b.key(name)
	if err != nil {
		return nil, err
	}
	obj, err := b.c.GetObject(ctx, b.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		if notFound(err) {
			return nil, fmt.Errorf("get %s: %w", name, backend.ErrNotFound)
		}
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	defer obj.Close()
	data, err := io.ReadAll(obj)
	if err != nil {
		if notFound(err) {
			return nil, fmt.Errorf("get %s: %w", name, backend.ErrNotFound)
		}
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	return data, nil
}

// Delete removes the object; a missing object is not an error.
func (b *Backend) Delete(ctx context.Context, name string) error {
	key, err := b.key(name)
	if err != nil {
		return err
	}
	if err := b.c.RemoveObject(ctx, b.bucket, key, minio.RemoveObjectOptions{}); err != nil && !notFound(err) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// List reports every object whose name starts with prefix.
func (b *Backend) List(ctx context.Context, prefix string, fn func(name string, size int64) error) error {
	if !backend.ValidPrefix(prefix) {
		return fmt.Errorf("invalid prefix %q", prefix)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for obj := range b.c.ListObjects(ctx, b.bucket, minio.ListObjectsOptions{Prefix: b.prefix + prefix, Recursive: true}) {
		if obj.Err != nil {
			return fmt.Errorf("list %q: %w", prefix, obj.Err)
		}
		name := strings.TrimPrefix(obj.Key, b.prefix)
		if !backend.ValidName(name) {
			continue // not ours
		}
		if err := fn(name, obj.Size); err != nil {
			return err
		}
	}
	return nil
}

// Close releases idle connections.
func (b *Backend) Close() error {
	return nil
}
