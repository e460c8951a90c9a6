package server

import (
	"context"

	"github.com/ferrymigrate/ferry"
)

// notifyingStore is the metadata store as the control plane and the jobs
// see it: after each change of a server it tells the data plane, whose
// session of that server then re-reads the record (new SETTINGS, a
// disconnect) at once instead of at its next poll.
type notifyingStore struct {
	ferry.Store
	changed func(id string)
}

// UpdateServer implements ferry.Store.
func (n notifyingStore) UpdateServer(ctx context.Context, id string, fn func(*ferry.SourceServer) error) (*ferry.SourceServer, error) {
	srv, err := n.Store.UpdateServer(ctx, id, fn)
	if err == nil {
		n.changed(id)
	}
	return srv, err
}

// DeleteServer implements ferry.Store.
func (n notifyingStore) DeleteServer(ctx context.Context, id string) error {
	err := n.Store.DeleteServer(ctx, id)
	if err == nil {
		n.changed(id)
	}
	return err
}
