package engine

import (
	"context"
	"math"
	"testing"
)

// TestRateWindowBounds: section 8's bounds, at their edges, for CreateOrg and UpdateOrg; a
// refused window changes nothing.
func TestRateWindowBounds(t *testing.T) {
	db := openTestDB(t)
	ctx := context.Background()
	for _, c := range []struct {
		rate  float64
		burst int
		ok    bool
	}{
		{MinRate, 1, true},
		{MaxRate, MaxBurst, true},
		{0.0099, 1, false},
		{1e-300, 1, false},
		{-1, 1, false},
		{math.NaN(), 1, false},
		{math.Inf(1), 1, false},
		{MaxRate * 1.0001, 1, false},
		{1, MaxBurst + 1, false},
		{1, -1, false},
		{1, math.MaxInt, false},
	} {
		_, err := db.CreateOrg(ctx, NewOrg{Name: "bounds", Rate: c.rate, Burst: c.burst})
		if c.ok && err != nil {
			t.Errorf("create rate %g burst %d: %v", c.rate, c.burst, err)
		}
		if !c.ok {
			wantCode(t, err, CodeValidation)
		}
	}
	orgs, err := db.Orgs()
	if err != nil || len(orgs) != 2 {
		t.Fatalf("%d orgs (%v), want the 2 windows within bounds", len(orgs), err)
	}

	org := newTestOrg(t, db)
	for _, rate := range []float64{0.0099, 1e-300, math.NaN(), math.Inf(1), 0} {
		_, err := db.UpdateOrg(ctx, org.OrgID, OrgUpdate{Rate: &rate})
		wantDetails(t, wantCode(t, err, CodeValidation), map[string]any{"field": "rate"})
	}
	for _, burst := range []int{0, MaxBurst + 1, math.MaxInt} {
		_, err := db.UpdateOrg(ctx, org.OrgID, OrgUpdate{Burst: &burst})
		wantDetails(t, wantCode(t, err, CodeValidation), map[string]any{"field": "burst"})
	}
	if got, err := db.Org(org.OrgID); err != nil || got.Rate != DefaultRate || got.Burst != DefaultBurst {
		t.Fatalf("after refused updates: %+v (%v), want the defaults untouched", got, err)
	}
	rate, burst := float64(MinRate), MaxBurst
	if got, err := db.UpdateOrg(ctx, org.OrgID, OrgUpdate{Rate: &rate, Burst: &burst}); err != nil || got.Rate != MinRate || got.Burst != MaxBurst {
		t.Fatalf("update to the edges: %+v (%v)", got, err)
	}
}
