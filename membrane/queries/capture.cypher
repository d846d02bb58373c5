// MemBrane: the facts one capture produced
// :param sha256 => ''
// Run the :param line above first (the capture's sha256, as `membrane facts`
// and `membrane status` print it), then this favourite. `membrane facts` runs it too.
MATCH (capture:Capture {sha256: $sha256})
OPTIONAL MATCH (capture)-[mention:MENTIONS]->(entity:Entity)
OPTIONAL MATCH (entity)-[fact]->(target:Entity) WHERE $sha256 IN fact.sources
RETURN capture, mention, entity, fact, target
ORDER BY entity.key, type(fact), target.key
