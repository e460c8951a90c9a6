package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strconv"

	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/nbd"
	"github.com/ferrymigrate/ferry/replica"
	"github.com/ferrymigrate/ferry/server"
)

// StoreOptions name a server data directory whose replica store the
// offline store verbs open (the server must not be running on it).
type StoreOptions struct {
	DataDir string
	Output  string
}

func openStore(ctx context.Context, o StoreOptions) (*replica.Store, error) {
	if o.DataDir == "" {
		return nil, errors.New("--data is required: the server's data directory")
	}
	if err := CheckFormat(o.Output); err != nil {
		return nil, err
	}
	return server.OpenExistingReplica(ctx, o.DataDir, nil)
}

// ErrVerifyFailed means verify found problems; the report names them.
var ErrVerifyFailed = errors.New("verify found problems")

// RunStoreVerify scrubs the whole replica store: every object decrypts and
// hashes right and every map's chunks exist. Problems are listed by object
// name and make it return ErrVerifyFailed.
func RunStoreVerify(ctx context.Context, o StoreOptions, out io.Writer) error {
	s, err := openStore(ctx, o)
	if err != nil {
		return err
	}
	defer s.Close()
	rep, err := s.Verify(ctx)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if o.Output != FormatTable {
		type problem struct{ Object, Error string }
		ps := make([]problem, 0, len(rep.Problems))
		for _, p := range rep.Problems {
			ps = append(ps, problem{p.Object, p.Err.Error()})
		}
		if err := writeData(out, o.Output, map[string]any{
			"chunks": rep.Chunks, "bytes": rep.Bytes, "maps": rep.Maps, "snapshots": rep.Snapshots,
			"disks": rep.Disks, "segments": rep.Segments, "unreferenced": rep.Unreferenced, "problems": ps,
		}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(out, "Checked %d disks, %d journal segments, %d block maps, %d snapshots, %d chunks (%s).\n",
			rep.Disks, rep.Segments, rep.Maps, rep.Snapshots, rep.Chunks, bytesIEC(rep.Bytes))
		fmt.Fprintf(out, "%d chunks are referenced by nothing (garbage; store gc deletes them).\n", rep.Unreferenced)
		for _, p := range rep.Problems {
			fmt.Fprintf(out, "PROBLEM %s: %v\n", p.Object, p.Err)
		}
	}
	if len(rep.Problems) > 0 {
		return fmt.Errorf("%w: %d (listed above)", ErrVerifyFailed, len(rep.Problems))
	}
	if o.Output == FormatTable {
		fmt.Fprintln(out, "No problems.")
	}
	return nil
}

// RunStoreUsage prints logical and stored bytes per disk.
func RunStoreUsage(ctx context.Context, o StoreOptions, out io.Writer) error {
	s, err := openStore(ctx, o)
	if err != nil {
		return err
	}
	defer s.Close()
	u, err := s.Usage(ctx)
	if err != nil {
		return fmt.Errorf("usage: %w", err)
	}
	if o.Output != FormatTable {
		return writeData(out, o.Output, u)
	}
	rows := make([][]string, 0, len(u.Disks)+1)
	for _, d := range u.Disks {
		rows = append(rows, []string{d.Disk, bytesIEC(d.Size), bytesIEC(d.Allocated), bytesIEC(d.Referenced), strconv.Itoa(d.Snapshots), bytesIEC(d.JournalBytes)})
	}
	if err := table(out, []string{"DISK", "SIZE", "ALLOCATED", "STORED", "SNAPSHOTS", "JOURNAL"}, rows); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nTotal: %s logical, %s stored in %d chunks after deduplication and compression\n", bytesIEC(u.LogicalBytes), bytesIEC(u.StoredBytes), u.Chunks)
	return nil
}

// RunStoreGC removes chunks that no block map or snapshot references.
func RunStoreGC(ctx context.Context, o StoreOptions, out io.Writer) error {
	s, err := openStore(ctx, o)
	if err != nil {
		return err
	}
	defer s.Close()
	st, err := s.GC(ctx)
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	if o.Output != FormatTable {
		return writeData(out, o.Output, st)
	}
	fmt.Fprintf(out, "%+v\n", st)
	return nil
}

// RunSnapshotsList lists the snapshots of one disk, or of every disk.
func RunSnapshotsList(ctx context.Context, o StoreOptions, disk string, out io.Writer) error {
	s, err := openStore(ctx, o)
	if err != nil {
		return err
	}
	defer s.Close()
	var disks []*replica.Disk
	if disk != "" {
		d, err := s.Disk(disk)
		if err != nil {
			return err
		}
		disks = []*replica.Disk{d}
	} else {
		disks = s.Disks()
	}
	var snaps []replica.SnapshotInfo
	for _, d := range disks {
		snaps = append(snaps, d.Snapshots()...)
	}
	sort.Slice(snaps, func(i, j int) bool {
		if snaps[i].Disk != snaps[j].Disk {
			return snaps[i].Disk < snaps[j].Disk
		}
		return snaps[i].Seq < snaps[j].Seq
	})
	if o.Output != FormatTable {
		if snaps == nil {
			snaps = []replica.SnapshotInfo{}
		}
		return writeData(out, o.Output, snaps)
	}
	rows := make([][]string, 0, len(snaps))
	for _, sn := range snaps {
		rows = append(rows, []string{sn.Disk, sn.ID, when(sn.Time), strconv.FormatUint(sn.Seq, 10), fmt.Sprint(sn.Consistency), bytesIEC(sn.Size), strconv.FormatBool(sn.Keep)})
	}
	return table(out, []string{"DISK", "SNAPSHOT", "TIME", "SEQ", "CONSISTENCY", "SIZE", "KEEP"}, rows)
}

// RunSnapshotsListOnline lists a source server's snapshots through the
// running server's API (disk, if not empty, keeps one disk's).
func RunSnapshotsListOnline(ctx context.Context, serverID, disk, format string, out io.Writer) error {
	if err := CheckFormat(format); err != nil {
		return err
	}
	cl, err := client()
	if err != nil {
		return err
	}
	var list api.List[api.Snapshot]
	if err := cl.Do(ctx, "GET", "/servers/"+url.PathEscape(serverID)+"/snapshots", nil, nil, &list); err != nil {
		return err
	}
	snaps := []api.Snapshot{}
	for _, sn := range list.Items {
		if disk == "" || sn.Disk == disk {
			snaps = append(snaps, sn)
		}
	}
	if disk != "" && len(snaps) == 0 && len(list.Items) > 0 {
		return fmt.Errorf("server %s has no disk %q with snapshots", serverID, disk)
	}
	if format != FormatTable {
		return writeData(out, format, snaps)
	}
	rows := make([][]string, 0, len(snaps))
	for _, sn := range snaps {
		rows = append(rows, []string{sn.Disk, sn.ID, when(sn.Time), strconv.FormatUint(sn.Seq, 10), sn.Consistency, bytesIEC(sn.SizeBytes)})
	}
	return table(out, []string{"DISK", "SNAPSHOT", "TIME", "SEQ", "CONSISTENCY", "SIZE"}, rows)
}

// ExportOptions say what to export and where.
type ExportOptions struct {
	StoreOptions
	Disk, Snapshot, Format, OutputFile string
}

// RunSnapshotsExport writes one snapshot as a raw, qcow2 or vmdk image file
// (sparse), through an NBD export read by qemu-img.
func RunSnapshotsExport(ctx context.Context, o ExportOptions, out io.Writer) error {
	if o.Disk == "" || o.Snapshot == "" || o.OutputFile == "" {
		return errors.New("--disk, --snapshot and --output-file are required")
	}
	s, err := openStore(ctx, o.StoreOptions)
	if err != nil {
		return err
	}
	defer s.Close()
	d, err := s.Disk(o.Disk)
	if err != nil {
		return err
	}
	r, err := d.OpenSnapshot(ctx, o.Snapshot)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := nbd.Export(ctx, nbd.WithExtents(r, r.Extents), o.Format, o.OutputFile); err != nil {
		return err
	}
	fmt.Fprintf(out, "Exported %s snapshot %s (%s) to %s as %s\n", o.Disk, o.Snapshot, bytesIEC(r.Size()), o.OutputFile, o.Format)
	return nil
}
