// MemBrane: entities only one capture supports
// :param limit => 50
// Mentioned by exactly one capture: a typo, a one-off, or a fact worth confirming.
MATCH (entity:Entity)
WHERE COUNT { (:Capture)-[:MENTIONS]->(entity) } = 1
MATCH (capture:Capture)-[:MENTIONS]->(entity)
RETURN entity, capture
ORDER BY capture.ingested_at DESC, entity.key LIMIT $limit
