package auth

import (
	"errors"
	"strings"
	"testing"
)

func TestNewParseCheck(t *testing.T) {
	s, err := New(APITokenPrefix)
	if err != nil {
		t.Fatal(err)
	}
	id, sec, err := Parse(APITokenPrefix, s.Plain)
	if err != nil {
		t.Fatal(err)
	}
	if id != s.ID {
		t.Fatalf("id = %q, want %q", id, s.ID)
	}
	if !Check(s.Hash, sec) {
		t.Fatal("Check rejected the right secret")
	}
	if Check(s.Hash, sec+"x") {
		t.Fatal("Check accepted a wrong secret")
	}
	other, _ := New(APITokenPrefix)
	if other.Plain == s.Plain || other.ID == s.ID {
		t.Fatal("two tokens are equal")
	}
}

func TestParseRejects(t *testing.T) {
	for _, tok := range []string{
		"", "fyt", "fyt_", "fyt__", "fyt_abc", "fyt_abc_", "fyt__abc", "fyi_abc_def",
		"xfyt_abc_def", "fyt_" + strings.Repeat("a", 65) + "_b", "fyt_a_" + strings.Repeat("b", 129),
	} {
		if _, _, err := Parse(APITokenPrefix, tok); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%q) err = %v, want ErrMalformed", tok, err)
		}
	}
}

func TestParseErrorHidesSecret(t *testing.T) {
	_, _, err := Parse(InstallTokenPrefix, "fyt_id_supersecretvalue")
	if err == nil || strings.Contains(err.Error(), "supersecret") {
		t.Fatalf("error %v leaks the secret", err)
	}
}
