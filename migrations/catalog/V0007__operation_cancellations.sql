-- CancelOperation's requests, apart from the operation's row: a worker holds that row
-- locked for a whole pass (a move's copy included), and a cancellation written there
-- would wait for the pass to end.
CREATE TABLE operation_cancellations (
    operation_id  uuid        PRIMARY KEY REFERENCES operations (operation_id) ON DELETE CASCADE,
    requested_at  timestamptz NOT NULL DEFAULT now()
);
