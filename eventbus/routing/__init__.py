"""Routing (auto-forwarding): configured rules and manual sends forward
stored instances to DIMSE peers (C-STORE) and DICOMweb endpoints (STOW-RS).

- config: the destinations and rules (settings), checked at start.
- rules: the event bus consumer that matches InstanceStored events to rules
  and queues deliveries (or marks studies to send once they are quiet).
- queue: the delivery queues, dead letters, quiet studies and manual sends,
  in the event bus's database, so that nothing queued is lost on a restart.
- delivery: one worker per destination, with retries and exponential backoff
  of its own, so that a destination that is down holds up no other.
- objects, dimse, stow: reading stored objects where storage grants, and
  sending them as stored.
- service: RoutingService (gRPC): manual sends, dead letters, replay."""
