// MemBrane graph schema, version 1.
// Every statement must be safe to run twice (IF NOT EXISTS): two processes may
// apply the same migration at once, and only the record of it is unique.

// One node per real-world entity: the upsert MERGEs on this key, and the
// constraint's index is what turns each MERGE into an index seek.
CREATE CONSTRAINT entity_key IF NOT EXISTS
FOR (e:Entity) REQUIRE e.key IS UNIQUE;

// One node per capture content; retraction and provenance look captures up by it.
CREATE CONSTRAINT capture_sha256 IF NOT EXISTS
FOR (c:Capture) REQUIRE c.sha256 IS UNIQUE;

// Captures are also found by file path (an edited file keeps its path).
CREATE INDEX capture_path IF NOT EXISTS
FOR (c:Capture) ON (c.path);
