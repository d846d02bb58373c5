// MemBrane: what changed recently
// :param since => datetime() - duration('P7D')
// :param limit => 25
// Captures ingested since $since, newest first, with the entities they mention.
MATCH (capture:Capture) WHERE capture.ingested_at >= $since
WITH capture ORDER BY capture.ingested_at DESC LIMIT $limit
OPTIONAL MATCH (capture)-[:MENTIONS]->(entity:Entity)
RETURN capture, collect(entity) AS entities
ORDER BY capture.ingested_at DESC
