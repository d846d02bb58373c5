// MemBrane: everything about an entity, with its sources
// :param key => 'nextcloud'
// Run the :param line above first (the entity's key, as `membrane show NAME`
// prints it), then this favourite. `membrane show NAME` runs the same query.
MATCH (e:Entity {key: $key})
OPTIONAL MATCH (mentioned:Capture)-[:MENTIONS]->(e)
WITH e, collect(mentioned) AS mentioned_in
OPTIONAL MATCH (e)-[fact]-(other:Entity)
OPTIONAL MATCH (source:Capture) WHERE source.sha256 IN fact.sources
RETURN e AS entity, mentioned_in, fact, other, collect(source) AS sources
ORDER BY type(fact), other.key
