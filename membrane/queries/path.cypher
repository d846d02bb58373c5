// MemBrane: the shortest path between two entities
// :param from_key => 'alice'
// :param to_key => 'debian 12'
// Keys as `membrane show` prints them. Through facts only, not through the
// captures that mention both.
MATCH (a:Entity {key: $from_key}), (b:Entity {key: $to_key})
MATCH path = shortestPath((a)-[*..8]-(b))
WHERE all(step IN relationships(path) WHERE type(step) <> 'MENTIONS')
RETURN path
