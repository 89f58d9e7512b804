//! `drover-exec-worker [exec-worker]`: the node's executor process alone,
//! for the node crate's tests, which are not the `drover` binary (whose
//! hidden `drover exec-worker` runs the same [`drover_node::exec::worker::run`]).

fn main() -> anyhow::Result<()> {
    drover_node::exec::worker::run()
}
