package testimage

import (
	"encoding/binary"
	"errors"
)

// partition is one primary MBR partition, in 512-byte sectors.
type partition struct {
	Active      bool
	Type        byte
	Start, Size uint32
}

// mbrSector returns a master boot record: bootCode (at most 440 bytes, such
// as SYSLINUX's mbr.bin) followed by the partition table and the signature.
// CHS fields hold the "use LBA" marker; every BIOS this runs on reads LBA.
func mbrSector(bootCode []byte, disk uint32, parts []partition) ([]byte, error) {
	if len(bootCode) > 440 {
		return nil, errors.New("boot code longer than 440 bytes")
	}
	if len(parts) > 4 {
		return nil, errors.New("more than 4 primary partitions")
	}
	s := make([]byte, 512)
	copy(s, bootCode)
	binary.LittleEndian.PutUint32(s[440:], disk)
	for i, p := range parts {
		e := s[446+16*i : 446+16*(i+1)]
		if p.Active {
			e[0] = 0x80
		}
		copy(e[1:4], []byte{0xfe, 0xff, 0xff})
		e[4] = p.Type
		copy(e[5:8], []byte{0xfe, 0xff, 0xff})
		binary.LittleEndian.PutUint32(e[8:], p.Start)
		binary.LittleEndian.PutUint32(e[12:], p.Size)
	}
	s[510], s[511] = 0x55, 0xaa
	return s, nil
}
