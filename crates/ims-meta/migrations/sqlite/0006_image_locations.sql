-- External locations of image data (Glance's `locations` in the read-only `http` store):
-- `locations_json` is the JSON array of `{"url", "metadata"}` objects, NULL when none. An image
-- whose data lives only there has `size` (and perhaps the hashes) set with no `blob_key`.
ALTER TABLE images ADD COLUMN locations_json TEXT;
