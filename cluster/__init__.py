"""What the nodes of a cluster share: the Store/Bus seam (in memory for one process,
Redis for many) and the room router that sends every request about a room to the
node holding it. The hub and the scheduler use both."""
