// Package blobs owns the bytes of image attachments: a content-addressed store keyed by the
// BLAKE3 hash of the bytes (Store), the fetcher that downloads an attachment URL without
// letting it reach this server's own network (Fetcher, Guard), and the check that the bytes
// really are an accepted image (CheckImage). FetchImage chains the three.
//
// It knows nothing of orgs, messages, billing or HTTP routes: callers keep the references and
// decide who may read which hash. It must never serve bytes that fail their hash, never make a
// partly written blob visible, and never connect to an address Guard refuses.
package blobs
