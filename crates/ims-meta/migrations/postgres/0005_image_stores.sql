-- Multiple stores: an image's data may be held by several stores under the same blob key.
-- `stores_json` is the JSON array of the ids of the stores holding it (NULL without data); it
-- replaces the single `store` column, whose value becomes the one-element array.
ALTER TABLE images ADD COLUMN stores_json TEXT;
UPDATE images SET stores_json = json_build_array(store)::text WHERE store IS NOT NULL;
ALTER TABLE images DROP COLUMN store;
