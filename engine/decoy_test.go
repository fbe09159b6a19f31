package engine

import (
	"encoding/base64"
	"slices"
	"strings"
	"testing"
)

// TestDecoyHashCostsWhatARealOneDoes: a sign-in with an unknown email is checked against the
// decoy, so the decoy must carry the very parameters, salt and key lengths of a real hash: a
// cheaper one would tell a wrong email from a wrong password by timing.
func TestDecoyHashCostsWhatARealOneDoes(t *testing.T) {
	genuine := strings.Split(hashPassword("a real password here"), "$")
	decoy := strings.Split(decoyHash, "$")
	if len(decoy) != len(genuine) || !slices.Equal(decoy[:4], genuine[:4]) {
		t.Fatalf("the decoy %q does not have a real hash's form and parameters (%q)", decoyHash, genuine[:4])
	}
	for i, part := range []string{"salt", "key"} {
		g, err1 := base64.RawStdEncoding.DecodeString(genuine[4+i])
		d, err2 := base64.RawStdEncoding.DecodeString(decoy[4+i])
		if err1 != nil || err2 != nil || len(d) != len(g) {
			t.Errorf("the decoy's %s is %d bytes (%v), a real one %d (%v)", part, len(d), err2, len(g), err1)
		}
	}
	if checkPassword(decoyHash, "decoy password never accepted") || checkPassword(decoyHash, "") {
		t.Error("a password matched the decoy")
	}
}
