//! The core driven by a scripted harness: a virtual clock, simulated nodes
//! that carry out the commands they receive, and the invariants checked
//! after every event. Short scripted cases first, then property tests over
//! random fleets and event orders.

use std::collections::BTreeMap;

use drover_shared::api::{ChunkKind, ChunkState, JobState};
use drover_shared::caps::{Adapter, Calibration, Capabilities, DeviceType};
use drover_shared::spec::JobSpec;

use super::*;

/// A job at 640x360 (the calibration size, so a node's calibration speed
/// is its speed for the job) with extra top-level JSON fields.
fn spec(frames: u64, extra: &str) -> JobSpec {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(",{extra}")
    };
    let mut s = JobSpec::from_json(&format!(
        r#"{{"name":"t","frames":{{"start":1,"end":{frames}}},"resolution":{{"width":640,"height":360}},
           "render":{{"kind":"shader","shader":"plasma"}}{extra}}}"#
    ))
    .unwrap();
    s.validate().unwrap();
    s
}

fn caps(gpu: bool, fps: f64) -> Capabilities {
    let a = Adapter {
        name: if gpu { "NVIDIA Test" } else { "llvmpipe" }.into(),
        backend: "Vulkan".into(),
        device_type: if gpu {
            DeviceType::DiscreteGpu
        } else {
            DeviceType::Cpu
        },
        vendor: if gpu { "nvidia" } else { "mesa" }.into(),
        vram_bytes: gpu.then_some(8 << 30),
    };
    Capabilities {
        adapters: vec![a.clone()],
        render_adapter: Some(a),
        encoders: vec!["libx264".into()],
        cpu_cores: 8,
        memory_bytes: 16 << 30,
        calibration: Some(Calibration {
            frames_per_s: fps,
            width: 640,
            height: 360,
        }),
        ..Default::default()
    }
}

/// One chunk a simulated node holds.
#[derive(Debug, Clone)]
struct SimChunk {
    key: ChunkKey,
    epoch: u32,
    start: u64,
    end: u64,
    /// Frames started (rendered or in flight).
    started: u64,
}

#[derive(Debug)]
struct SimNode {
    name: String,
    node_id: String,
    caps: Capabilities,
    id: Option<NodeId>,
    session: u64,
    connected: bool,
    /// Sends no heartbeats while the clock advances (a hung machine).
    silent: bool,
    chunks: Vec<SimChunk>,
}

/// The harness: the core, a virtual clock, and nodes that obey commands.
struct Harness {
    core: Core,
    now: u64,
    nodes: Vec<SimNode>,
    next_session: u64,
    /// Shrinks received and not answered yet: (node index, chunk, epoch,
    /// proposed end).
    shrinks: Vec<(usize, ChunkKey, u32, u64)>,
    /// The last shrink answer a node sent, to deliver it again.
    last_ack: Option<Event>,
    log: Vec<Command>,
    /// Every fact the core journaled, folded: must always agree with the
    /// core (what a restart would rebuild).
    replayed: Recovery,
}

impl Harness {
    fn new(config: CoreConfig) -> Harness {
        Harness {
            core: Core::new(config),
            now: 1_000,
            nodes: Vec::new(),
            next_session: 1,
            shrinks: Vec::new(),
            last_ack: None,
            log: Vec::new(),
            replayed: Recovery::default(),
        }
    }

    /// The facts folded give every job the core holds exactly as the core
    /// has it: state, stored segments, running chunks, missing frames.
    fn check_replay(&self) {
        for (id, r) in &self.replayed.jobs {
            let Some(c) = self.core.record(*id) else {
                continue;
            };
            let ctx = format!("job {id}: facts and core disagree");
            let state = |s: JobState| match s {
                JobState::Unschedulable if r.first_frame_at_ms.is_some() => JobState::Running,
                JobState::Unschedulable => JobState::Queued,
                s => s,
            };
            assert_eq!(state(c.state), r.state, "{ctx} on state");
            assert_eq!(c.done, r.done, "{ctx} on stored segments");
            assert_eq!(c.missing, r.missing, "{ctx} on missing frames");
            assert_eq!(c.next_chunk, r.next_chunk, "{ctx} on chunk ids");
            let live: Vec<_> = c
                .running
                .iter()
                .map(|(k, v)| (*k, v.start, v.end, v.epoch))
                .collect();
            let rep: Vec<_> = r
                .running
                .iter()
                .map(|(k, v)| (*k, v.start, v.end, v.epoch))
                .collect();
            if !c.state.is_terminal() {
                assert_eq!(live, rep, "{ctx} on running chunks");
            }
            assert_eq!(
                (c.frames_stolen, c.frames_wasted),
                (r.frames_stolen, r.frames_wasted),
                "{ctx} on counters"
            );
        }
    }

    fn ix(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn id(&self, name: &str) -> NodeId {
        self.nodes[self.ix(name)].id.expect("admitted")
    }

    fn handle(&mut self, e: Event) -> Vec<Command> {
        let cmds = self.core.handle(self.now, e);
        self.after(&cmds);
        cmds
    }

    fn after(&mut self, cmds: &[Command]) {
        self.core.check_invariants();
        for f in self.core.take_facts() {
            self.replayed.apply(&f);
        }
        self.replayed.take_finished();
        self.check_replay();
        for c in cmds {
            match c {
                Command::Welcome { session, node } => {
                    if let Some(n) = self.nodes.iter_mut().find(|n| n.session == *session) {
                        n.id = Some(*node);
                        n.connected = true;
                    }
                }
                Command::Refuse { session, .. } => {
                    if let Some(n) = self.nodes.iter_mut().find(|n| n.session == *session) {
                        n.connected = false;
                    }
                }
                Command::Assign { node, assignment } => {
                    let n = self.by_id(*node);
                    assert!(n.connected, "assignment to a node that is not connected");
                    n.chunks.push(SimChunk {
                        key: assignment.chunk,
                        epoch: assignment.epoch,
                        start: assignment.start,
                        end: assignment.end,
                        started: 0,
                    });
                }
                Command::Cancel { node, chunk, .. } => {
                    if let Some(n) = self.try_by_id(*node) {
                        n.chunks.retain(|c| c.key != *chunk);
                    }
                }
                Command::Shrink {
                    node,
                    chunk,
                    epoch,
                    proposed_end,
                } => {
                    let ix = self.nodes.iter().position(|n| n.id == Some(*node)).unwrap();
                    self.shrinks.push((ix, *chunk, *epoch, *proposed_end));
                }
                _ => {}
            }
        }
        self.log.extend(cmds.iter().cloned());
    }

    fn try_by_id(&mut self, id: NodeId) -> Option<&mut SimNode> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == Some(id) && n.connected)
    }

    fn by_id(&mut self, id: NodeId) -> &mut SimNode {
        self.try_by_id(id).expect("known node")
    }

    fn connect(&mut self, name: &str, caps: Capabilities) -> Vec<Command> {
        let session = self.next_session;
        self.next_session += 1;
        let node_id = format!("id-{name}");
        match self.nodes.iter().position(|n| n.name == name) {
            Some(ix) => {
                let n = &mut self.nodes[ix];
                n.session = session;
                n.caps = caps.clone();
                n.chunks.clear();
            }
            None => self.nodes.push(SimNode {
                name: name.into(),
                node_id: node_id.clone(),
                caps: caps.clone(),
                id: None,
                session,
                connected: false,
                silent: false,
                chunks: Vec::new(),
            }),
        }
        let node_id = self.nodes[self.ix(name)].node_id.clone();
        self.handle(Event::Hello {
            session,
            name: name.into(),
            node_id,
            caps: Box::new(caps),
            running: Vec::new(),
            spooled: Vec::new(),
        })
    }

    fn disconnect(&mut self, name: &str) -> Vec<Command> {
        let ix = self.ix(name);
        let (node, session) = (self.nodes[ix].id.unwrap(), self.nodes[ix].session);
        self.nodes[ix].connected = false;
        self.nodes[ix].chunks.clear();
        self.handle(Event::Disconnected { node, session })
    }

    fn submit(&mut self, s: JobSpec) -> JobId {
        let (id, cmds) = self.core.submit(self.now, s, Default::default());
        self.after(&cmds);
        id
    }

    fn held(&self, name: &str) -> Vec<(ChunkKey, u64, u64)> {
        self.nodes[self.ix(name)]
            .chunks
            .iter()
            .map(|c| (c.key, c.start, c.end))
            .collect()
    }

    /// The node reports `frames` frames done of its chunk `key`.
    fn progress(&mut self, name: &str, key: ChunkKey, frames: u64) -> Vec<Command> {
        let ix = self.ix(name);
        let n = &mut self.nodes[ix];
        let c = n.chunks.iter_mut().find(|c| c.key == key).expect("held");
        c.started = c.started.max(frames);
        let (epoch, node) = (c.epoch, n.id.unwrap());
        self.handle(Event::Progress {
            node,
            report: ChunkReport {
                chunk: key,
                epoch,
                frames_done: frames,
            },
        })
    }

    /// The node answers its oldest pending shrink as a real node does: the
    /// proposal, or later if it already started frames past it.
    fn answer_shrink(&mut self) -> Vec<Command> {
        let (ix, key, epoch, proposed) = self.shrinks.remove(0);
        let n = &mut self.nodes[ix];
        let end = n.chunks.iter_mut().find(|c| c.key == key).map(|c| {
            let last_started = (c.start + c.started).saturating_sub(1);
            let e = proposed.max(last_started).max(c.start).min(c.end);
            c.end = e;
            e
        });
        let node = n.id.unwrap();
        let ack = Event::ShrinkAck {
            node,
            chunk: key,
            epoch,
            end,
        };
        self.last_ack = Some(ack.clone());
        self.handle(ack)
    }

    /// The node renders its chunk `key` to the end, uploads and reports it.
    fn finish(&mut self, name: &str, key: ChunkKey) -> Vec<Command> {
        let ix = self.ix(name);
        let n = &mut self.nodes[ix];
        let pos = n.chunks.iter().position(|c| c.key == key).expect("held");
        let c = n.chunks.remove(pos);
        let node = n.id.unwrap();
        let hash = format!("h{}-{}", key.0, key.1);
        let mut cmds = self.handle(Event::SegmentStored {
            node,
            chunk: key,
            epoch: c.epoch,
            start: c.start,
            end: c.end,
            segment: format!("seg-{}-{}", key.0, key.1),
            hash: hash.clone(),
        });
        cmds.extend(self.handle(Event::ChunkDone {
            node,
            chunk: key,
            epoch: c.epoch,
            start: c.start,
            end: c.end,
            hash,
            elapsed_ms: 1_000,
        }));
        cmds
    }

    fn fail(&mut self, name: &str, key: ChunkKey, frame: Option<u64>) -> Vec<Command> {
        let ix = self.ix(name);
        let n = &mut self.nodes[ix];
        let pos = n.chunks.iter().position(|c| c.key == key).expect("held");
        let c = n.chunks.remove(pos);
        let node = n.id.unwrap();
        self.handle(Event::ChunkFailed {
            node,
            chunk: key,
            epoch: c.epoch,
            reason: "boom".into(),
            failed_frame: frame,
            log_tail: format!("stderr of {name}: frame {frame:?} panicked"),
        })
    }

    fn heartbeat(&mut self, name: &str) -> Vec<Command> {
        let ix = self.ix(name);
        let n = &self.nodes[ix];
        let chunks = n
            .chunks
            .iter()
            .filter(|c| c.started > 0)
            .map(|c| ChunkReport {
                chunk: c.key,
                epoch: c.epoch,
                frames_done: c.started,
            })
            .collect();
        let node = n.id.unwrap();
        self.handle(Event::Heartbeat {
            node,
            cpu_load_pct: 50.0,
            memory_load_pct: 30.0,
            chunks,
        })
    }

    /// Moves the clock, wakes the core at each deadline on the way, and has
    /// every connected node that is not silent heartbeat each second.
    fn advance(&mut self, ms: u64) -> Vec<Command> {
        let until = self.now + ms;
        let mut all = Vec::new();
        loop {
            let next_beat = (self.now / 1_000 + 1) * 1_000;
            let deadline = self.core.poll_timeout().unwrap_or(u64::MAX);
            let at = next_beat.min(deadline);
            if at > until {
                break;
            }
            self.now = self.now.max(at);
            if deadline <= self.now {
                all.extend(self.handle(Event::Timeout));
            }
            if next_beat == self.now {
                let beating: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|n| n.connected && !n.silent)
                    .map(|n| n.name.clone())
                    .collect();
                for name in beating {
                    all.extend(self.heartbeat(&name));
                }
            }
        }
        self.now = until;
        all
    }

    /// Runs every node to completion, in order, answering shrinks as they
    /// come, until nothing is held; returns the commands seen.
    fn drain(&mut self) -> Vec<Command> {
        let mut all = Vec::new();
        for _ in 0..10_000 {
            if !self.shrinks.is_empty() {
                all.extend(self.answer_shrink());
                continue;
            }
            let next = self
                .nodes
                .iter()
                .find(|n| n.connected && !n.chunks.is_empty())
                .map(|n| (n.name.clone(), n.chunks[0].key));
            match next {
                Some((name, key)) => {
                    self.now += 10;
                    all.extend(self.progress(&name, key, 0));
                    all.extend(self.finish(&name, key));
                }
                None => return all,
            }
        }
        panic!("drain did not settle");
    }

    fn view(&self, job: JobId) -> drover_shared::api::JobView {
        self.core.job_view(job).expect("job exists")
    }

    /// Every frame of the job is in exactly one done chunk (or missing),
    /// in order, and the mux asked for exactly those segments.
    fn assert_exact(&self, job: JobId) {
        let v = self.view(job);
        let mut next = 1;
        for c in v.chunks.iter().filter(|c| c.state == ChunkState::Done) {
            while v.missing_frames.contains(&next) {
                next += 1;
            }
            assert_eq!(c.start, next, "gap or overlap before {c:?} in {v:?}");
            next = c.end + 1;
        }
        while v.missing_frames.contains(&next) {
            next += 1;
        }
        assert_eq!(next, v.frames_total + 1, "frames missing at the end: {v:?}");
    }
}

/// The assignments among `cmds`: node and frame range.
fn assigns(cmds: &[Command]) -> Vec<(NodeId, u64, u64)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Assign { node, assignment } => Some((*node, assignment.start, assignment.end)),
            _ => None,
        })
        .collect()
}

fn mux_segments(cmds: &[Command]) -> Option<Vec<String>> {
    cmds.iter().find_map(|c| match c {
        Command::Mux { segments, .. } => Some(segments.clone()),
        _ => None,
    })
}

#[test]
fn idle_nodes_share_a_new_job_and_chunks_follow_speed() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("a", caps(false, 10.0));
    h.connect("b", caps(false, 10.0));
    let job = h.submit(spec(96, ""));
    // Two idle nodes split the 96 frames instead of one taking them all.
    assert_eq!(h.held("a"), vec![((job, 0), 1, 48)]);
    assert_eq!(h.held("b"), vec![((job, 1), 49, 96)]);
    // Chunks are sized by speed: 20 s at 10 frames/s is 200 frames.
    let big = h.submit(spec(1_000, ""));
    assert_eq!(h.held("a")[1].1..=h.held("a")[1].2, 1..=200);
    assert_eq!(h.held("b")[1], ((big, 1), 201, 400));
    let cmds = h.drain();
    assert_eq!(h.view(job).state, JobState::Muxing);
    h.assert_exact(job);
    h.assert_exact(big);
    assert!(mux_segments(&cmds).is_some());
    h.handle(Event::MuxDone {
        job,
        output: "out.mp4".into(),
    });
    let v = h.view(job);
    assert_eq!(v.state, JobState::Done);
    assert_eq!(
        v.output_url.as_deref(),
        Some(&*format!("/v1/jobs/{job}/output"))
    );
    assert_eq!(v.frames_by_node.values().sum::<u64>(), 96);
}

/// A fast and a slow node share a 600-frame job; the slow one starts its
/// chunk and the fast one finishes all of its own, which leaves it idle.
fn fast_node_runs_out_of_work() -> (Harness, JobId, (ChunkKey, u64, u64)) {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("fast", caps(false, 100.0));
    h.connect("slow", caps(false, 10.0));
    let job = h.submit(spec(600, ""));
    let slow = h.held("slow");
    assert_eq!(slow.len(), 1, "{slow:?}");
    h.progress("slow", slow[0].0, 0);
    for (k, _, _) in h.held("fast") {
        h.progress("fast", k, 0);
        h.now += 2_000;
        h.finish("fast", k);
    }
    (h, job, slow[0])
}

#[test]
fn an_idle_node_steals_the_tail_of_the_latest_chunk() {
    let (mut h, job, (skey, s0, s1)) = fast_node_runs_out_of_work();
    // The fast node is idle now: it asked the slow node to stop early.
    let shrink = h.shrinks.first().copied().expect("a shrink was sent");
    assert_eq!(shrink.1, skey);
    assert!(
        shrink.3 > s0 && shrink.3 < s1,
        "{shrink:?} inside {s0}-{s1}"
    );
    // The slow node already started frames past the proposal: its answer
    // (later than proposed) is what counts.
    let past = shrink.3 - s0 + 5;
    h.progress("slow", skey, past);
    let cmds = h.answer_shrink();
    let stolen = assigns(&cmds);
    assert_eq!(stolen.len(), 1, "{cmds:?}");
    let ans_end = h.held("slow")[0].2;
    assert_eq!(ans_end, s0 + past - 1, "answered the last started frame");
    assert_eq!((stolen[0].1, stolen[0].2), (ans_end + 1, s1));
    let v = h.view(job);
    assert_eq!(v.frames_stolen, s1 - ans_end);
    assert!(v
        .chunks
        .iter()
        .any(|c| c.kind == ChunkKind::Stolen && c.node.as_deref() == Some("fast")));
    h.drain();
    h.assert_exact(job);
}

#[test]
fn shrink_answers_late_twice_or_after_done_keep_accounting_exact() {
    let (mut h, job, _) = fast_node_runs_out_of_work();
    let (ix, key, epoch, _) = h.shrinks[0];
    // The shrink times out unanswered: the thief looks elsewhere...
    h.advance(10_000);
    assert!(h.held("fast").is_empty() || h.held("fast")[0].0 .0 == job);
    // ...then the answer arrives late, and twice. It is applied once.
    h.answer_shrink();
    let node = h.nodes[ix].id.unwrap();
    let end = h.held("slow")[0].2;
    h.handle(Event::ShrinkAck {
        node,
        chunk: key,
        epoch,
        end: Some(end),
    });
    // A stale answer claiming an end beyond the chunk changes nothing.
    h.handle(Event::ShrinkAck {
        node,
        chunk: key,
        epoch,
        end: Some(end + 50),
    });
    h.drain();
    h.assert_exact(job);
    // An answer for a chunk that is gone is ignored.
    h.handle(Event::ShrinkAck {
        node,
        chunk: key,
        epoch,
        end: Some(1),
    });
    h.assert_exact(job);
}

#[test]
fn a_node_that_stops_early_without_being_asked_gives_back_the_rest() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("a", caps(false, 10.0));
    let job = h.submit(spec(50, ""));
    let (key, s, _) = h.held("a")[0];
    // The node renders only 20 frames and uploads them.
    h.nodes[0].chunks[0].end = s + 19;
    h.finish("a", key);
    // The other 30 frames are waiting again and go back to the node.
    assert_eq!(h.held("a")[0].1, s + 20);
    h.drain();
    h.assert_exact(job);
}

#[test]
fn uploads_are_admitted_only_for_the_holder_and_the_chunk_range() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("a", caps(false, 10.0));
    h.connect("b", caps(false, 10.0));
    let _job = h.submit(spec(40, ""));
    let (key, s, e) = h.held("a")[0];
    let (a, b) = (h.id("a"), h.id("b"));
    let epoch = h.nodes[0].chunks[0].epoch;
    let check = |h: &Harness, node, epoch, start, end, want: Result<(), &str>| {
        let got = h.core.may_upload(node, key, epoch, start, end);
        match want {
            Ok(()) => assert_eq!(got, UploadVerdict::Accept),
            Err(text) => {
                assert!(
                    matches!(&got, UploadVerdict::NotNeeded(r) if r.contains(text)),
                    "{got:?}"
                )
            }
        }
    };
    check(&h, a, epoch, s, e, Ok(()));
    check(&h, a, epoch, s, s, Ok(()));
    check(&h, b, epoch, s, e, Err("not assigned to this node"));
    check(&h, a, epoch + 1, s, e, Err("not assigned"));
    check(&h, a, epoch, s + 1, e, Err("do not fit"));
    check(&h, a, epoch, s, e + 1, Err("do not fit"));
    // A done report whose segment was not stored is a failure, not a hole.
    let cmds = h.handle(Event::ChunkDone {
        node: a,
        chunk: key,
        epoch,
        start: s,
        end: e,
        hash: "x".into(),
        elapsed_ms: 1,
    });
    assert!(h
        .view(key.0)
        .chunks
        .iter()
        .all(|c| c.state != ChunkState::Done));
    let _ = cmds;
}

#[test]
fn requirements_route_and_unschedulable_names_each_missing_one() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("cpu", caps(false, 10.0));
    let gpu_job = h.submit(spec(24, r#""requirements":{"gpu":"required"}"#));
    let v = h.view(gpu_job);
    assert_eq!(v.state, JobState::Unschedulable);
    let why = v.error.unwrap();
    assert!(
        why.contains("needs a GPU") && why.contains("no connected node has it"),
        "{why}"
    );
    let nvenc = h.submit(spec(
        24,
        r#""requirements":{"encoder":"h264_nvenc","tags":["fast"]}"#,
    ));
    let why = h.view(nvenc).error.unwrap();
    assert!(
        why.contains("needs encoder h264_nvenc: no connected node has it"),
        "{why}"
    );
    assert!(why.contains(r#"needs tag "fast""#), "{why}");
    assert!(h.held("cpu").is_empty());
    // A node that matches joins: the job runs at once.
    let cmds = h.connect("gpu", caps(true, 100.0));
    assert_eq!(assigns(&cmds).len(), 1);
    assert_eq!(h.held("gpu")[0].0 .0, gpu_job);
    assert_eq!(h.view(gpu_job).state, JobState::Queued);
    assert!(h.view(gpu_job).error.is_none());
    // It leaves; nothing runs it now: unschedulable again, chunk back.
    h.disconnect("gpu");
    assert_eq!(h.view(gpu_job).state, JobState::Unschedulable);
    // "preferred" picks the GPU node when both are idle.
    h.connect("gpu", caps(true, 10.0));
    h.handle(Event::CancelJob { job: gpu_job });
    let pref = h.submit(spec(24, r#""requirements":{"gpu":"preferred"}"#));
    assert!(h.held("gpu").iter().any(|c| c.0 .0 == pref));
}

#[test]
fn vendor_name_vram_cores_memory_pool_are_matched() {
    let mut h = Harness::new(CoreConfig::default());
    let mut big = caps(true, 10.0);
    big.pool = "studio".into();
    big.memory_bytes = 32 << 30;
    big.tags = vec!["fast".into()];
    h.connect("big", big);
    h.connect("cpu", caps(false, 10.0));
    let cases = [
        (r#""requirements":{"gpu_vendor":"nvidia"}"#, Some("big")),
        (r#""requirements":{"gpu_vendor":"amd"}"#, None),
        (r#""requirements":{"gpu_name":"nvidia*"}"#, Some("big")),
        (r#""requirements":{"min_vram_mib":8192}"#, Some("big")),
        (r#""requirements":{"min_vram_mib":8193}"#, None),
        (r#""requirements":{"min_cores":9}"#, None),
        (r#""requirements":{"min_memory_mib":16385}"#, Some("big")),
        (
            r#""requirements":{"pool":"studio","tags":["fast"]}"#,
            Some("big"),
        ),
        (r#""requirements":{"backend":"metal"}"#, None),
    ];
    for (req, want) in cases {
        let job = h.submit(spec(10, req));
        let on: Vec<String> = h
            .nodes
            .iter()
            .filter(|n| n.chunks.iter().any(|c| c.key.0 == job))
            .map(|n| n.name.clone())
            .collect();
        match want {
            Some(name) => assert_eq!(on, vec![name.to_string()], "{req}"),
            None => {
                assert!(on.is_empty(), "{req}");
                assert_eq!(h.view(job).state, JobState::Unschedulable, "{req}");
            }
        }
        h.handle(Event::CancelJob { job });
    }
}

/// One node renders a 40-frame job in which `bad` always fails, naming the
/// frame or not, until the job stops running; returns the harness, the job
/// and how many chunks failed. Blocklisting and quarantine are off, so the
/// one node keeps the job.
fn run_with_bad_frame(extra: &str, bad: u64, named: bool) -> (Harness, JobId, u32) {
    let cfg = CoreConfig {
        blocklist_after: 100,
        quarantine_after_jobs: 100,
        ..Default::default()
    };
    let mut h = Harness::new(cfg);
    h.connect("a", caps(false, 10.0));
    let job = h.submit(spec(40, extra));
    let mut failures = 0;
    for _ in 0..500 {
        let Some((key, s, e)) = h.held("a").first().copied() else {
            if h.view(job).state != JobState::Running {
                break;
            }
            // Failed frames wait out their backoff.
            h.advance(70_000);
            continue;
        };
        h.progress("a", key, 0);
        if (s..=e).contains(&bad) {
            failures += 1;
            h.fail("a", key, named.then_some(bad));
        } else {
            h.finish("a", key);
        }
    }
    (h, job, failures)
}

#[test]
fn a_bad_frame_is_isolated_and_fails_the_job_naming_it() {
    let (h, job, failures) = run_with_bad_frame("", 17, true);
    let v = h.view(job);
    assert_eq!(v.state, JobState::Failed);
    assert_eq!(failures, 3);
    let why = v.error.clone().unwrap();
    assert!(why.starts_with("frame 17 failed 3 times"), "{why}");
    // Everything but frame 17 was rendered.
    assert_eq!(v.frames_done, 39, "{v:?}");
}

#[test]
fn a_bad_frame_found_by_bisection_can_be_left_out() {
    // The node cannot tell which frame is bad: bisection finds it.
    let (h, job, _) = run_with_bad_frame(r#""allow_missing_frames":true"#, 23, false);
    let v = h.view(job);
    assert_eq!(v.state, JobState::Muxing, "{v:?}");
    assert_eq!(v.missing_frames, vec![23]);
    h.assert_exact(job);
}

#[test]
fn a_node_failing_a_job_is_blocklisted_for_it() {
    let mut h = Harness::new(CoreConfig {
        retry_backoff_ms: 0,
        ..Default::default()
    });
    h.connect("bad", caps(false, 10.0));
    let job = h.submit(spec(10, ""));
    for _ in 0..2 {
        for (key, _, _) in h.held("bad") {
            h.fail("bad", key, None);
        }
        h.advance(10);
    }
    let v = h.view(job);
    assert_eq!(v.blocklisted_nodes, vec!["bad".to_string()]);
    assert_eq!(v.state, JobState::Unschedulable);
    assert!(v.error.unwrap().contains("blocklisted"));
    // Another job still runs there; a good node takes the blocked job.
    let other = h.submit(spec(5, ""));
    assert_eq!(h.held("bad")[0].0 .0, other);
    h.connect("good", caps(false, 10.0));
    assert!(h.held("good").iter().all(|c| c.0 .0 == job));
    h.drain();
    h.assert_exact(job);
}

#[test]
fn a_node_failing_across_jobs_is_quarantined_until_cleared() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("flaky", caps(false, 10.0));
    let jobs: Vec<JobId> = (0..3).map(|_| h.submit(spec(5, ""))).collect();
    for _ in 0..3 {
        let (key, _, _) = h.held("flaky")[0];
        h.fail("flaky", key, None);
    }
    let nv = &h.core.node_views(h.now)[0];
    assert!(
        nv.quarantined
            .as_deref()
            .unwrap()
            .contains("3 different jobs"),
        "{nv:?}"
    );
    h.advance(100_000);
    assert!(h.held("flaky").is_empty(), "quarantined nodes get no work");
    assert!(jobs
        .iter()
        .all(|j| h.view(*j).state == JobState::Unschedulable));
    h.handle(Event::ClearQuarantine {
        name: "flaky".into(),
    });
    assert!(!h.held("flaky").is_empty());
    h.drain();
    for j in jobs {
        h.assert_exact(j);
    }
}

#[test]
fn a_higher_priority_job_takes_the_node_and_shrinks_lower_work() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("a", caps(false, 10.0));
    let low = h.submit(spec(1_000, r#""priority":10"#));
    let held = h.held("a");
    assert_eq!(held.len(), 2);
    h.progress("a", held[0].0, 0);
    h.progress("a", held[0].0, 5);
    let high = h.submit(spec(50, r#""priority":90"#));
    // The queued low chunk is taken back, the running one shrunk.
    assert_eq!(h.held("a").len(), 2, "{:?}", h.held("a"));
    assert_eq!(
        h.held("a")[1].0 .0,
        high,
        "the freed slot went to the high job"
    );
    assert_eq!(h.shrinks.len(), 1);
    h.answer_shrink();
    assert!(h.held("a")[0].2 < held[0].2, "the low chunk now ends early");
    let order: Vec<JobId> = {
        let mut seen = Vec::new();
        let _ = h.drain();
        for c in &h.log {
            if let Command::Assign { assignment, .. } = c {
                seen.push(assignment.chunk.0);
            }
        }
        seen
    };
    let first_high = order.iter().position(|j| *j == high).unwrap();
    let last_high = order.iter().rposition(|j| *j == high).unwrap();
    let low_after = order[first_high..].iter().position(|j| *j == low).unwrap() + first_high;
    assert!(last_high < low_after || order[first_high..=last_high].iter().all(|j| *j == high));
    h.assert_exact(low);
    h.assert_exact(high);
}

#[test]
fn a_high_job_queued_behind_a_low_chunk_shrinks_it() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("a", caps(false, 10.0));
    // 150 frames fit one chunk: the node keeps a free queue slot.
    let low = h.submit(spec(150, r#""priority":10"#));
    let (lk, _, _) = h.held("a")[0];
    h.progress("a", lk, 0);
    h.progress("a", lk, 20);
    let high = h.submit(spec(30, r#""priority":90"#));
    assert_eq!(h.held("a")[1].0 .0, high, "queued behind the low chunk");
    // The low chunk is asked to stop after the frame it is on.
    assert_eq!(h.shrinks.len(), 1);
    assert_eq!(h.shrinks[0].3, 22);
    h.answer_shrink();
    assert_eq!(h.held("a")[0].2, 22);
    h.finish("a", lk);
    // Next comes the high job, then the rest of the low one.
    assert_eq!(h.held("a")[0].0 .0, high);
    h.drain();
    h.assert_exact(low);
    h.assert_exact(high);
}

#[test]
fn equal_priorities_share_by_project_and_max_nodes_caps_a_job() {
    let mut h = Harness::new(CoreConfig {
        chunking: Chunking::Fixed(10),
        steal: false,
        speculate: false,
        ..Default::default()
    });
    let a = h.submit(spec(200, r#""project":"alpha""#));
    let b = h.submit(spec(200, r#""project":"beta""#));
    for i in 0..4 {
        h.connect(&format!("n{i}"), caps(false, 10.0));
    }
    let mut per_job: BTreeMap<JobId, usize> = BTreeMap::new();
    for n in &h.nodes {
        for c in &n.chunks {
            *per_job.entry(c.key.0).or_default() += 1;
        }
    }
    assert_eq!(per_job[&a], per_job[&b], "fair share: {per_job:?}");
    let capped = h.submit(spec(200, r#""max_nodes":1,"priority":99"#));
    h.drain();
    let v = h.view(capped);
    assert_eq!(v.frames_by_node.len(), 1, "{:?}", v.frames_by_node);
    h.assert_exact(capped);
}

#[test]
fn a_starving_job_ages_upward() {
    let mut h = Harness::new(CoreConfig {
        aging_ms: 1_000,
        ..Default::default()
    });
    let job = h.submit(spec(10, r#""priority":5"#));
    h.advance(10_500);
    // It waited ten aging periods with nothing running.
    let v = h.core.jobs[&job].eff_prio;
    assert_eq!(v, 15);
    h.connect("a", caps(false, 10.0));
    assert_eq!(h.core.jobs[&job].eff_prio, 5, "running resets it");
}

#[test]
fn a_silent_node_is_reaped_at_its_deadline_and_late_reports_are_ignored() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("a", caps(false, 10.0));
    // Nothing runs: the core's only deadline is the node's liveness.
    assert_eq!(h.core.poll_timeout(), Some(h.now + 5_001));
    h.connect("b", caps(false, 10.0));
    let job = h.submit(spec(100, ""));
    let (akey, _, _) = h.held("a")[0];
    let a_chunk = h.nodes[0].chunks[0].clone();
    h.nodes[0].silent = true;
    h.advance(6_000);
    // a was silent for 6 s: reaped, its frames went to b.
    assert!(!h.core.node_views(h.now)[0].connected);
    let cmds = h.finish("b", h.held("b")[0].0);
    let _ = cmds;
    // A late report from a's old attempt changes nothing.
    let a = h.id("a");
    h.handle(Event::SegmentStored {
        node: a,
        chunk: akey,
        epoch: a_chunk.epoch,
        start: a_chunk.start,
        end: a_chunk.end,
        segment: "late".into(),
        hash: "late".into(),
    });
    h.drain();
    h.assert_exact(job);
    assert!(!h.view(job).frames_by_node.contains_key("a"));
}

#[test]
fn a_forgotten_node_has_its_session_closed_and_its_slot_reused() {
    let mut h = Harness::new(CoreConfig {
        forget_node_ms: 60_000,
        ..Default::default()
    });
    h.connect("a", caps(false, 10.0));
    let (old_id, old_session) = (h.id("a"), h.nodes[0].session);
    // Silent, reaped, then away long enough to be forgotten: its session,
    // which never closed, is closed so nothing it sends counts for the
    // node that gets its slot next.
    h.nodes[0].silent = true;
    let cmds = h.advance(70_000);
    assert!(cmds.contains(&Command::CloseSession {
        session: old_session
    }));
    assert!(h.core.node_view("a", h.now).is_none());
    h.connect("b", caps(false, 10.0));
    assert_eq!(h.id("b"), old_id, "the slot is reused");
}

#[test]
fn a_stalled_chunk_is_taken_back_as_a_failure() {
    let mut h = Harness::new(CoreConfig {
        chunk_stall_timeout_ms: 60_000,
        node_timeout_ms: 10_000_000,
        ..Default::default()
    });
    h.connect("a", caps(false, 10.0));
    let job = h.submit(spec(10, ""));
    let (key, _, _) = h.held("a")[0];
    h.progress("a", key, 3);
    h.advance(59_000);
    assert!(h.held("a").iter().any(|c| c.0 == key));
    h.advance(2_000);
    assert!(h.held("a").iter().all(|c| c.0 != key), "cancelled");
    let v = h.view(job);
    assert!(
        v.chunks.iter().any(|c| c
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("no progress for 60 s"))),
        "{v:?}"
    );
}

#[test]
fn a_straggler_gets_a_speculative_copy_and_the_first_result_wins() {
    let mut h = Harness::new(CoreConfig {
        speculate_stall_ms: 20_000,
        ..Default::default()
    });
    h.connect("a", caps(false, 10.0));
    let job = h.submit(spec(100, ""));
    let (key, _, _) = h.held("a")[0];
    h.progress("a", key, 0);
    h.progress("a", key, 10);
    h.connect("b", caps(false, 10.0));
    // b is idle; stealing from a would pay, so first a steal is proposed.
    if !h.shrinks.is_empty() {
        // a never answers: it has hung.
        h.shrinks.clear();
    }
    h.advance(30_000);
    let v = h.view(job);
    assert!(
        v.chunks.iter().any(|c| c.kind == ChunkKind::Speculative),
        "{v:?}"
    );
    let (copy, _, _) = h.held("b")[0];
    h.progress("b", copy, 0);
    h.progress("b", copy, 50);
    let cmds = h.finish("b", copy);
    assert!(cmds
        .iter()
        .any(|c| matches!(c, Command::Cancel { chunk, .. } if *chunk == key)));
    let v = h.view(job);
    assert_eq!(v.frames_wasted, 10);
    h.drain();
    h.assert_exact(job);
}

#[test]
fn admission_refuses_a_taken_name_and_replaces_a_reconnecting_node() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("a", caps(false, 10.0));
    let job = h.submit(spec(30, ""));
    let cmds = h.handle(Event::Hello {
        session: 99,
        name: "a".into(),
        node_id: "someone-else".into(),
        caps: Box::new(caps(false, 10.0)),
        running: Vec::new(),
        spooled: Vec::new(),
    });
    match &cmds[..] {
        [Command::Refuse {
            session: 99,
            reason,
        }] => {
            assert!(
                reason.contains("already used by another connected node"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    let old_session = h.nodes[0].session;
    let cmds = h.connect("a", caps(false, 10.0));
    assert!(cmds.contains(&Command::CloseSession {
        session: old_session
    }));
    assert!(cmds.iter().any(|c| matches!(c, Command::Welcome { .. })));
    h.drain();
    h.assert_exact(job);
    let long = "x".repeat(65);
    let cmds = h.handle(Event::Hello {
        session: 100,
        name: long,
        node_id: "n".into(),
        caps: Box::new(caps(false, 1.0)),
        running: Vec::new(),
        spooled: Vec::new(),
    });
    assert!(matches!(&cmds[..], [Command::Refuse { reason, .. }] if reason.contains("1..=64")));
}

#[test]
fn restore_keeps_done_frames_and_waits_for_the_rest() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("a", caps(false, 10.0));
    let job = h.submit(spec(1_000, ""));
    let (key, _, _) = h.held("a")[0];
    h.finish("a", key);
    let record = h.core.record(job).unwrap();
    let done: u64 = record.done.iter().map(|(s, d)| d.end - s + 1).sum();
    let mut state = Recovery::default();
    state.jobs.insert(job, record.clone());
    let (mut core, cmds) = Core::restore(CoreConfig::default(), state, h.now);
    assert!(!cmds.iter().any(|c| matches!(c, Command::Mux { .. })));
    assert_eq!(core.job_view(job).unwrap().state, JobState::Unschedulable);
    core.check_invariants();
    let v = core.job_view(job).unwrap();
    assert_eq!(v.frames_done, done);
    let waiting: u64 = v
        .chunks
        .iter()
        .filter(|c| c.state == ChunkState::Pending)
        .map(|c| c.end - c.start + 1)
        .sum();
    // The chunk that was running is reserved for its node until the
    // adoption deadline; then its frames wait too.
    let reserved: u64 = record.running.values().map(|c| c.end - c.start + 1).sum();
    assert!(reserved > 0);
    assert_eq!(waiting + reserved + done, 1_000);
    let cmds = core.handle(
        h.now + CoreConfig::default().adopt_grace_ms + 1,
        Event::Timeout,
    );
    core.check_invariants();
    assert!(
        !cmds.iter().any(|c| matches!(c, Command::Assign { .. })),
        "no node yet"
    );
    let v = core.job_view(job).unwrap();
    let waiting: u64 = v
        .chunks
        .iter()
        .filter(|c| c.state == ChunkState::Pending)
        .map(|c| c.end - c.start + 1)
        .sum();
    assert_eq!(waiting + done, 1_000);
    let (next, _) = core.submit(5, spec(5, ""), Default::default());
    assert_eq!(next, job + 1, "ids continue after restored ones");
}

#[test]
fn speed_is_learned_from_real_frames() {
    let mut h = Harness::new(CoreConfig::default());
    // The node claims 10 frames/s but really does 40.
    h.connect("a", caps(false, 10.0));
    let job = h.submit(spec(5_000, ""));
    for _ in 0..6 {
        let (key, s, e) = h.held("a")[0];
        let ix = h.ix("a");
        let c = h.nodes[ix].chunks.remove(0);
        let node = h.id("a");
        let frames = e - s + 1;
        h.handle(Event::SegmentStored {
            node,
            chunk: key,
            epoch: c.epoch,
            start: s,
            end: e,
            segment: "s".into(),
            hash: "h".into(),
        });
        h.handle(Event::ChunkDone {
            node,
            chunk: key,
            epoch: c.epoch,
            start: s,
            end: e,
            hash: "h".into(),
            elapsed_ms: frames * 25,
        });
    }
    // What matters is the prediction for this job (the split between the
    // node's speed and the job's cost is the core's business).
    let fps = h.core.expected_fps(h.id("a"), job);
    assert!(fps > 30.0 && fps < 45.0, "learned {fps}");
    assert!(h.core.node_views(h.now)[0].speed_fps["shader@360p"] > 10.0);
    // New chunks are sized for the real speed: about 20 s at 40 frames/s.
    let (_, s, e) = h.held("a").last().copied().unwrap();
    assert!(e - s + 1 > 600, "{s}-{e}");
    let _ = job;
}

mod props {
    //! Property tests: random fleets, jobs and event orders.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Advance(u64),
        Start(usize),
        Progress(usize, u64),
        Finish(usize),
        Fail(usize, bool),
        AnswerShrink,
        DuplicateLastAnswer,
        Disconnect(usize),
        Reconnect(usize),
        Heartbeat(usize),
        Cancel(usize),
        Submit(u64, bool, u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u64..20_000).prop_map(Step::Advance),
            (0usize..5).prop_map(Step::Start),
            ((0usize..5), 1u64..200).prop_map(|(n, f)| Step::Progress(n, f)),
            (0usize..5).prop_map(Step::Finish),
            (0usize..5).prop_map(Step::Finish),
            ((0usize..5), any::<bool>()).prop_map(|(n, k)| Step::Fail(n, k)),
            Just(Step::AnswerShrink),
            Just(Step::DuplicateLastAnswer),
            (0usize..5).prop_map(Step::Disconnect),
            (0usize..5).prop_map(Step::Reconnect),
            (0usize..5).prop_map(Step::Heartbeat),
            (0usize..4).prop_map(Step::Cancel),
            ((1u64..400), any::<bool>(), 0u8..100).prop_map(|(f, g, p)| Step::Submit(f, g, p)),
        ]
    }

    /// Is there a connected, unquarantined, not blocklisted node able to
    /// run the job? Computed from the outside, through the API views.
    fn runnable(h: &Harness, job: JobId) -> bool {
        let v = h.view(job);
        let spec = &h.core.jobs[&job].spec;
        h.core.node_views(h.now).iter().any(|n| {
            n.connected
                && n.quarantined.is_none()
                && !v.blocklisted_nodes.contains(&n.name)
                && drover_shared::caps::can_run(spec, &n.capabilities).is_ok()
        })
    }

    fn run(fleet: Vec<(bool, f64)>, jobs: Vec<(u64, bool, u8)>, steps: Vec<Step>) {
        let mut h = Harness::new(CoreConfig {
            retry_backoff_ms: 100,
            max_frame_failures: 2,
            ..Default::default()
        });
        for (i, (gpu, fps)) in fleet.iter().enumerate() {
            h.connect(&format!("n{i}"), caps(*gpu, *fps));
        }
        let mut ids = Vec::new();
        let submit = |h: &mut Harness, ids: &mut Vec<JobId>, frames, gpu: bool, prio| {
            let req = if gpu {
                r#","requirements":{"gpu":"required"}"#
            } else {
                ""
            };
            let extra = format!(
                r#""priority":{prio},"allow_missing_frames":{}{req}"#,
                prio % 2 == 0
            );
            ids.push(h.submit(spec(frames, &extra)));
        };
        for (f, g, p) in jobs {
            submit(&mut h, &mut ids, f, g, p);
        }
        let n = fleet.len();
        for s in steps {
            let name = |i: usize| format!("n{}", i % n);
            let first = |h: &Harness, i: usize| {
                let node = &h.nodes[i % n];
                (node.connected && !node.chunks.is_empty()).then(|| node.chunks[0].key)
            };
            match s {
                Step::Advance(ms) => {
                    h.advance(ms);
                }
                Step::Start(i) => {
                    if let Some(k) = first(&h, i) {
                        h.progress(&name(i), k, 0);
                    }
                }
                Step::Progress(i, f) => {
                    if let Some(k) = first(&h, i) {
                        let c = &h.nodes[i % n].chunks[0];
                        let f = f.min(c.end - c.start + 1);
                        h.progress(&name(i), k, f);
                    }
                }
                Step::Finish(i) => {
                    if let Some(k) = first(&h, i) {
                        h.finish(&name(i), k);
                    }
                }
                Step::Fail(i, known) => {
                    if let Some(k) = first(&h, i) {
                        let c = &h.nodes[i % n].chunks[0];
                        let frame = known.then_some(c.start + (c.end - c.start) / 2);
                        h.fail(&name(i), k, frame);
                    }
                }
                Step::AnswerShrink => {
                    if !h.shrinks.is_empty() {
                        h.answer_shrink();
                    }
                }
                Step::DuplicateLastAnswer => {
                    // The node's last answer arrives a second time.
                    if let Some(e) = h.last_ack.clone() {
                        h.handle(e);
                    }
                }
                Step::Disconnect(i) => {
                    if h.nodes[i % n].connected {
                        h.disconnect(&name(i));
                    }
                }
                Step::Reconnect(i) => {
                    if !h.nodes[i % n].connected {
                        let c = h.nodes[i % n].caps.clone();
                        h.connect(&name(i), c);
                    }
                }
                Step::Heartbeat(i) => {
                    if h.nodes[i % n].connected {
                        h.heartbeat(&name(i));
                    }
                }
                Step::Cancel(j) => {
                    if let Some(job) = ids.get(j).copied() {
                        h.handle(Event::CancelJob { job });
                    }
                }
                Step::Submit(f, g, p) => submit(&mut h, &mut ids, f, g, p),
            }
            for &job in &ids {
                let Some(j) = h.core.jobs.get(&job) else {
                    continue;
                };
                if j.state.is_terminal() || j.state == JobState::Muxing {
                    continue;
                }
                let waiting = j.ready_frames > 0 || !j.delayed.is_empty();
                if waiting && j.live.is_empty() {
                    assert_eq!(
                        j.state == JobState::Unschedulable,
                        !runnable(&h, job),
                        "job {job} state {:?} error {:?}",
                        j.state,
                        j.error
                    );
                }
            }
        }
        // Everyone comes back and works until the end.
        for i in 0..n {
            if !h.nodes[i].connected {
                let c = h.nodes[i].caps.clone();
                h.connect(&format!("n{i}"), c);
            }
            h.handle(Event::ClearQuarantine {
                name: format!("n{i}"),
            });
        }
        let gpu_present = fleet.iter().any(|(g, _)| *g);
        for _ in 0..200 {
            h.drain();
            h.advance(120_000);
            for i in 0..n {
                h.heartbeat(&format!("n{i}"));
            }
            let open = ids.iter().any(|j| {
                h.core
                    .jobs
                    .get(j)
                    .is_some_and(|j| !matches!(j.state, JobState::Muxing | JobState::Unschedulable))
            });
            if !open {
                break;
            }
        }
        for job in ids {
            let v = h.view(job);
            match v.state {
                JobState::Muxing => h.assert_exact(job),
                JobState::Failed | JobState::Cancelled => {
                    assert!(v.state == JobState::Cancelled || v.error.is_some(), "{v:?}")
                }
                JobState::Unschedulable => {
                    let needs_gpu = h.core.jobs[&job].spec.requirements.gpu
                        == drover_shared::spec::GpuRequirement::Required;
                    assert!(
                        (needs_gpu && !gpu_present) || !v.blocklisted_nodes.is_empty(),
                        "stuck: {v:?}"
                    );
                }
                other => panic!(
                    "job {job} ended {other:?}: {v:?}\nnodes: {:?}\nclasses: {:?}",
                    h.core.node_views(h.now),
                    h.core
                        .classes
                        .iter()
                        .map(|c| (c.free.clone(), c.ready_jobs.clone(), c.available))
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn every_frame_is_accounted_for_whatever_the_order(
            fleet in prop::collection::vec((any::<bool>(), 5.0f64..200.0), 1..5),
            jobs in prop::collection::vec((1u64..500, any::<bool>(), 0u8..100), 1..4),
            steps in prop::collection::vec(step(), 0..300),
        ) {
            run(fleet, jobs, steps);
        }
    }
}

/// A hello with what the node kept from before.
fn hello_with(
    h: &mut Harness,
    name: &str,
    running: Vec<RunningReport>,
    spooled: Vec<SpooledReport>,
) -> Vec<Command> {
    let session = h.next_session;
    h.next_session += 1;
    let ix = h.ix(name);
    h.nodes[ix].session = session;
    let (node_id, caps) = (h.nodes[ix].node_id.clone(), h.nodes[ix].caps.clone());
    h.handle(Event::Hello {
        session,
        name: name.into(),
        node_id,
        caps: Box::new(caps),
        running,
        spooled,
    })
}

#[test]
fn a_restarted_core_readopts_running_chunks_and_takes_spooled_segments() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("a", caps(false, 10.0));
    h.connect("b", caps(false, 10.0));
    let job = h.submit(spec(600, ""));
    let (ka, sa, ea) = h.held("a")[0];
    let (kb, sb, eb) = h.held("b")[0];
    let (epa, epb) = (h.nodes[0].chunks[0].epoch, h.nodes[1].chunks[0].epoch);
    h.progress("a", ka, 3);
    h.progress("b", kb, 0);
    // The coordinator dies: what the journal folded is all that is left.
    let state = h.replayed.clone();
    let cfg = CoreConfig {
        incarnation: 2,
        ..Default::default()
    };
    let (core, _) = Core::restore(cfg, state, h.now);
    core.check_invariants();
    h.core = core;
    for n in &mut h.nodes {
        n.chunks.clear();
        n.id = None;
    }
    // a still renders its chunk; b finished its chunk while the
    // coordinator was away and has it in its spool; a also reports a
    // chunk the coordinator never gave it.
    let cmds = hello_with(
        &mut h,
        "a",
        vec![
            RunningReport {
                chunk: ka,
                epoch: epa,
                start: sa,
                end: ea,
                frames_done: 7,
            },
            RunningReport {
                chunk: (job, 999),
                epoch: epa,
                start: 590,
                end: 600,
                frames_done: 0,
            },
        ],
        Vec::new(),
    );
    let a = h.id("a");
    // The simulated node still runs it.
    h.nodes[0].chunks.insert(
        0,
        SimChunk {
            key: ka,
            epoch: epa,
            start: sa,
            end: ea,
            started: 7,
        },
    );
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, Command::Assign { assignment, .. } if assignment.chunk == ka)),
        "re-adopted, not sent again"
    );
    assert!(cmds.iter().any(
        |c| matches!(c, Command::Cancel { node, chunk, .. } if *node == a && *chunk == (job, 999))
    ));
    let v = h.view(job);
    let adopted = v.chunks.iter().find(|c| c.index == Some(ka.1)).unwrap();
    assert_eq!(adopted.node.as_deref(), Some("a"));
    assert_eq!(adopted.frames_done, 7);
    // b's segment: reserved at its hello, taken at its upload.
    hello_with(
        &mut h,
        "b",
        Vec::new(),
        vec![SpooledReport {
            chunk: kb,
            epoch: epb,
            start: sb,
            end: eb,
            hash: "hb".into(),
        }],
    );
    let b = h.id("b");
    assert_eq!(h.core.may_upload(b, kb, epb, sb, eb), UploadVerdict::Accept);
    assert!(matches!(
        h.core.may_upload(b, kb, epb + 1, sb, eb),
        UploadVerdict::NotNeeded(_)
    ));
    h.handle(Event::SegmentStored {
        node: b,
        chunk: kb,
        epoch: epb,
        start: sb,
        end: eb,
        segment: "seg-b".into(),
        hash: "hb".into(),
    });
    assert_eq!(h.view(job).frames_by_node["b"], eb - sb + 1);
    // The epoch of the new run is the new incarnation; ids continue.
    let fresh = h.held("b");
    assert!(fresh.iter().all(|(k, _, _)| k.1 > kb.1.max(ka.1)));
    h.drain();
    h.assert_exact(job);
}

#[test]
fn reserved_chunks_nobody_claims_wait_again_after_the_grace() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("a", caps(false, 10.0));
    let job = h.submit(spec(100, ""));
    let (ka, _, _) = h.held("a")[0];
    h.progress("a", ka, 2);
    let (core, _) = Core::restore(CoreConfig::default(), h.replayed.clone(), h.now);
    h.core = core;
    h.nodes[0].chunks.clear();
    // Another node is there, but the reserved frames are not its own.
    h.connect("b", caps(false, 10.0));
    assert!(h.held("b").iter().all(|(k, _, _)| *k != ka));
    h.advance(CoreConfig::default().adopt_grace_ms + 1);
    h.drain();
    h.assert_exact(job);
}

#[test]
fn a_drained_node_finishes_its_chunk_takes_nothing_new_until_undrained() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("a", caps(false, 10.0));
    let job = h.submit(spec(2_000, ""));
    assert_eq!(h.held("a").len(), 2, "one running, one queued");
    let (k, _, _) = h.held("a")[0];
    h.progress("a", k, 1);
    h.handle(Event::Drain {
        name: "a".into(),
        now: false,
    });
    // The queued chunk went back; the running one stays.
    assert_eq!(h.held("a").iter().map(|c| c.0).collect::<Vec<_>>(), vec![k]);
    assert!(h.core.node_views(h.now)[0].drained);
    h.finish("a", k);
    assert!(h.held("a").is_empty(), "drained: nothing new");
    // Remembered across a restart.
    let (core, _) = Core::restore(CoreConfig::default(), h.replayed.clone(), h.now);
    h.core = core;
    h.nodes[0].chunks.clear();
    h.connect("a", caps(false, 10.0));
    assert!(h.held("a").is_empty(), "still drained after a restart");
    h.handle(Event::Undrain { name: "a".into() });
    assert!(!h.held("a").is_empty());
    // With `now`, the running chunk is shrunk to the frame it is on.
    let (k, s, _) = h.held("a")[0];
    h.progress("a", k, 4);
    let cmds = h.handle(Event::Drain {
        name: "a".into(),
        now: true,
    });
    assert!(cmds.iter().any(
        |c| matches!(c, Command::Shrink { chunk, proposed_end, .. } if *chunk == k && *proposed_end == s + 4)
    ));
    h.handle(Event::Undrain { name: "a".into() });
    h.drain();
    h.assert_exact(job);
}

#[test]
fn a_retry_renders_only_what_a_failed_job_is_missing() {
    let (mut h, job, _) = run_with_bad_frame("", 23, true);
    let v = h.view(job);
    assert_eq!(v.state, JobState::Failed, "{v:?}");
    let kept = v.frames_done;
    assert!(kept > 0);
    assert!(h.core.may_retry(job).is_ok());
    h.handle(Event::RetryJob { job });
    let v = h.view(job);
    assert!(
        matches!(v.state, JobState::Running | JobState::Queued),
        "{v:?}"
    );
    assert_eq!(v.frames_done, kept, "stored frames are kept");
    assert!(v.error.is_none());
    // The bad frame renders now (the retry is a user's call).
    h.drain();
    h.assert_exact(job);
    assert!(h.core.may_retry(job).is_err(), "not failed any more");
    assert!(h.core.may_retry(job + 100).is_err(), "unknown");
}

#[test]
fn a_paused_job_starts_nothing_and_is_not_stolen_from_until_resumed() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("a", caps(false, 10.0));
    let job = h.submit(spec(2_000, ""));
    let (k, _, _) = h.held("a")[0];
    h.progress("a", k, 1);
    h.handle(Event::PauseJob { job, paused: true });
    assert!(h.view(job).paused);
    // A fresh idle node gets nothing: no new chunk, no stolen tail, no copy.
    h.connect("b", caps(false, 10.0));
    assert!(h.held("b").is_empty(), "paused: nothing starts");
    // What was running finishes and is kept.
    let held_a: Vec<_> = h.held("a").iter().map(|c| c.0).collect();
    for c in held_a {
        h.finish("a", c);
    }
    assert!(h.held("a").is_empty() && h.held("b").is_empty());
    let done = h.view(job).frames_done;
    assert!(done > 0);
    // Paused is durable.
    let (core, _) = Core::restore(CoreConfig::default(), h.replayed.clone(), h.now);
    assert!(core.job_view(job).unwrap().paused);
    h.handle(Event::PauseJob { job, paused: false });
    assert!(!h.held("a").is_empty() || !h.held("b").is_empty());
    h.drain();
    h.assert_exact(job);
    assert!(h.core.may_change(job).is_err(), "done: nothing to pause");
}

#[test]
fn a_raised_priority_is_durable_and_wins_the_next_free_node() {
    let mut h = Harness::new(CoreConfig::default());
    let low = h.submit(spec(200, r#""priority":10"#));
    let mid = h.submit(spec(200, r#""priority":50"#));
    h.handle(Event::SetPriority {
        job: low,
        priority: 90,
    });
    assert_eq!(h.view(low).priority, 90);
    let (core, _) = Core::restore(CoreConfig::default(), h.replayed.clone(), h.now);
    assert_eq!(core.job_view(low).unwrap().priority, 90);
    // The first node goes to the raised job.
    h.connect("a", caps(false, 10.0));
    let held = h.held("a");
    assert!(!held.is_empty());
    assert_eq!(held[0].0 .0, low, "{held:?}");
    h.drain();
    h.assert_exact(low);
    h.assert_exact(mid);
}

#[test]
fn a_failed_chunk_shows_its_error_and_the_executors_log_tail() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("a", caps(false, 10.0));
    let job = h.submit(spec(100, ""));
    let (k, s, _) = h.held("a")[0];
    h.fail("a", k, Some(s));
    let v = h.view(job);
    let failed = v
        .chunks
        .iter()
        .find(|c| c.attempts > 0)
        .unwrap_or_else(|| panic!("{v:?}"));
    assert_eq!(failed.last_error.as_deref(), Some("a: boom"));
    assert_eq!(
        failed.log_tail.as_deref(),
        Some(format!("stderr of a: frame {:?} panicked", Some(s)).as_str())
    );
}

#[test]
fn tags_an_admin_sets_route_jobs_at_once_and_survive_a_restart() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("a", caps(false, 10.0));
    let job = h.submit(spec(40, r#""requirements":{"tags":["4k"]}"#));
    assert!(h.held("a").is_empty(), "a has no 4k tag");
    assert_eq!(h.view(job).state, JobState::Unschedulable);
    h.handle(Event::SetTags {
        name: "a".into(),
        tags: Some(vec!["4k".into()]),
    });
    assert!(!h.held("a").is_empty(), "tagged: the job runs there now");
    let nv = &h.core.node_views(h.now)[0];
    assert_eq!(nv.capabilities.tags, vec!["4k".to_string()]);
    // Remembered across a restart, over what the node says of itself.
    let (core, _) = Core::restore(CoreConfig::default(), h.replayed.clone(), h.now);
    h.core = core;
    h.nodes[0].chunks.clear();
    h.connect("a", caps(false, 10.0));
    assert_eq!(
        h.core.node_views(h.now)[0].capabilities.tags,
        vec!["4k".to_string()]
    );
    // Given back: the node's own tags again.
    h.handle(Event::SetTags {
        name: "a".into(),
        tags: None,
    });
    assert!(h.core.node_views(h.now)[0].capabilities.tags.is_empty());
}

#[test]
fn job_ids_continue_after_every_job_was_archived() {
    // The journal's state after a restart whose jobs all left for the
    // archive: no job in memory, only the next id.
    let mut state = Recovery::default();
    state.next_job = 42;
    let (mut core, _) = Core::restore(CoreConfig::default(), state, 0);
    let (id, _) = core.submit(1, spec(10, ""), Default::default());
    assert_eq!(id, 42);
}

#[test]
fn a_retry_ends_a_pause_the_job_ended_with() {
    let mut h = Harness::new(CoreConfig::default());
    let job = h.submit(spec(100, ""));
    h.handle(Event::PauseJob { job, paused: true });
    h.handle(Event::CancelJob { job });
    h.handle(Event::RetryJob { job });
    assert!(!h.view(job).paused);
    let (core, _) = Core::restore(CoreConfig::default(), h.replayed.clone(), h.now);
    assert!(!core.job_view(job).unwrap().paused, "replayed the same");
    h.connect("a", caps(false, 10.0));
    assert!(!h.held("a").is_empty(), "it runs");
    h.drain();
    h.assert_exact(job);
}

#[test]
fn a_jobs_summary_is_its_views_summary_without_building_the_chunks() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("a", caps(false, 10.0));
    let job = h.submit(spec(500, ""));
    let same = |h: &Harness| {
        let v = h.core.job_view(job).unwrap();
        assert_eq!(
            h.core.job_summary(job).unwrap(),
            drover_shared::api::JobSummary::from(&v)
        );
    };
    same(&h);
    let (k, _, _) = h.held("a")[0];
    h.progress("a", k, 3);
    same(&h);
    h.handle(Event::PauseJob { job, paused: true });
    same(&h);
    h.handle(Event::CancelJob { job });
    same(&h);
}

#[test]
fn the_fleet_view_shows_node_states_rates_and_job_etas() {
    use drover_shared::api::FleetNodeState as S;
    let mut h = Harness::new(CoreConfig::default());
    for name in ["a", "b", "c"] {
        h.connect(name, caps(false, 10.0));
    }
    let f = h.core.fleet_view(h.now, None);
    let states: Vec<_> = f.nodes.iter().map(|n| (n.name.as_str(), n.state)).collect();
    assert_eq!(states, [("a", S::Idle), ("b", S::Idle), ("c", S::Idle)]);
    // 10 frames/s at 640x360 is 2.5 at 720p, the idle nodes' common measure.
    assert_eq!(f.nodes[0].speed_fps, 2.5);
    assert_eq!(
        (f.nodes[0].adapter.as_str(), f.nodes[0].backend.as_str()),
        ("llvmpipe", "Vulkan")
    );
    assert!(f.jobs.is_empty());

    let job = h.submit(spec(2_000, r#""priority":70"#));
    let (k, start, end) = h.held("a")[0];
    h.progress("a", k, 0);
    h.advance(2_000);
    h.progress("a", k, 20);
    let f = h.core.fleet_view(h.now, None);
    let a = &f.nodes[0];
    assert_eq!(a.state, S::Busy);
    assert_eq!(
        (a.job, a.frame_start, a.frame_end),
        (Some(job), Some(start), Some(end))
    );
    assert_eq!(a.frames_done, 20);
    assert_eq!(a.fps, 10.0, "20 frames in 2 s");
    assert_eq!(a.memory_load_pct, 30.0, "from the heartbeat");
    assert!(a.heartbeat_age_ms < 1_000);
    let j = &f.jobs[0];
    assert_eq!((j.id, j.priority, j.state), (job, 70, JobState::Running));
    assert_eq!(j.nodes, ["a", "b", "c"]);
    // Only a's chunk has started: the job renders at its 10 frames/s.
    assert_eq!(j.fps, 10.0);
    assert_eq!(j.eta_s, Some((2_000 - j.frames_done).div_ceil(10)));

    h.handle(Event::Drain {
        name: "b".into(),
        now: false,
    });
    h.disconnect("c");
    let f = h.core.fleet_view(h.now, None);
    let states: Vec<_> = f.nodes.iter().map(|n| n.state).collect();
    assert_eq!(states, [S::Busy, S::Draining, S::Lost]);
    assert!(
        !f.jobs[0].nodes.contains(&"c".to_string()),
        "{:?}",
        f.jobs[0]
    );

    h.handle(Event::PauseJob { job, paused: true });
    let f = h.core.fleet_view(h.now, None);
    assert_eq!(f.jobs[0].reason.as_deref(), Some("paused"));
    // A key scoped to another project sees every node and none of the jobs.
    let other = h.core.fleet_view(h.now, Some("elsewhere"));
    assert_eq!(
        (other.nodes.len(), other.jobs.len(), other.jobs_total),
        (3, 0, 0)
    );
    assert_eq!(f.jobs_total, 1);
}

#[test]
fn a_preemption_notice_drains_at_once_and_hands_back_unrendered_frames() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("spot", caps(false, 10.0));
    let job = h.submit(spec(2_000, ""));
    let held = h.held("spot");
    assert_eq!(held.len(), 2, "one running, one queued");
    let (k, s, e) = held[0];
    h.progress("spot", k, 5);
    let cmds = h.handle(Event::Preempt {
        name: "spot".into(),
    });
    // The queued chunk goes back at once; the running one is cut at the
    // frame it is on.
    assert!(cmds
        .iter()
        .any(|c| matches!(c, Command::Cancel { chunk, .. } if *chunk == held[1].0)));
    assert!(cmds.iter().any(
        |c| matches!(c, Command::Shrink { chunk, proposed_end, .. } if *chunk == k && *proposed_end == s + 5)
    ));
    assert!(h.core.node_views(h.now)[0].drained);
    h.answer_shrink();
    assert_eq!(h.held("spot"), vec![(k, s, s + 5)]);
    assert!(s + 5 < e);
    // Another node takes the frames handed back now, not when the spot
    // node is gone; the spot node takes nothing new.
    h.connect("steady", caps(false, 10.0));
    assert!(!h.held("steady").is_empty());
    h.finish("spot", k);
    assert!(h.held("spot").is_empty());
    h.drain();
    assert!(h.held("spot").is_empty());
    assert_eq!(h.view(job).state, JobState::Muxing);
    h.assert_exact(job);
}

#[test]
fn a_pool_report_counts_the_work_its_nodes_could_run_even_with_no_node() {
    use super::pools::PoolNode;
    let mut h = Harness::new(CoreConfig::default());
    let mut declared = caps(false, 10.0);
    declared.pool = "render".into();
    // A job for the pool waits with no node (unschedulable) and counts;
    // one for another pool and a paused one do not.
    let for_pool = h.submit(spec(100, r#""requirements":{"pool":"render"}"#));
    h.submit(spec(50, r#""requirements":{"pool":"other"}"#));
    let paused = h.submit(spec(70, ""));
    h.handle(Event::PauseJob {
        job: paused,
        paused: true,
    });
    let r = h.core.pool_report("render", &declared, 0.5);
    assert_eq!(h.view(for_pool).state, JobState::Unschedulable);
    assert_eq!((r.backlog_frames, r.jobs, r.work_s), (100, 1, 50.0));
    assert!(r.nodes.is_empty());
    // A node of the pool joins: its calibrated speed (10 frames/s at the
    // job's size) replaces the estimate, and it is busy.
    h.connect("render-1", declared.clone());
    let r = h.core.pool_report("render", &declared, 0.5);
    assert_eq!(
        r.nodes,
        vec![PoolNode {
            name: "render-1".into(),
            busy: true,
            drained: false
        }]
    );
    assert_eq!(r.backlog_frames, 100);
    assert!((r.work_s - 10.0).abs() < 1e-6, "{}", r.work_s);
    // Frames rendered in running chunks are not work left.
    let (k, _, _) = h.held("render-1")[0];
    h.progress("render-1", k, 20);
    let r = h.core.pool_report("render", &declared, 0.5);
    assert_eq!(r.backlog_frames, 80);
    h.drain();
    let r = h.core.pool_report("render", &declared, 0.5);
    assert_eq!((r.backlog_frames, r.nodes[0].busy), (0, false));
}

/// What `/metrics` reads of the core: jobs by state, the queue in frames
/// and in seconds at the learned speed, nodes by pool and state.
#[test]
fn the_load_summary_follows_jobs_queue_and_node_states() {
    use super::summary::{NodeState, UNKNOWN_FRAME_S};
    let node = |s: &summary::LoadSummary, pool: &str, state: NodeState| {
        s.nodes.get(&(pool.to_string(), state)).copied()
    };
    let mut h = Harness::new(CoreConfig::default());
    let s = h.core.load_summary();
    assert_eq!((s.queue_frames, s.queue_seconds), (0, 0.0));
    assert_eq!(
        node(&s, "", NodeState::Idle),
        Some(0),
        "the default pool always shows"
    );
    // No node has ever joined: the queue counts at the fallback frame time.
    let job = h.submit(spec(100, ""));
    let s = h.core.load_summary();
    assert_eq!(s.queue_frames, 100);
    assert_eq!(s.queue_seconds, 100.0 * UNKNOWN_FRAME_S);
    let active = |s: &summary::LoadSummary| {
        s.jobs
            .iter()
            .filter(|(st, _)| !st.is_terminal())
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    assert_eq!(active(&s), 1);
    // A node at 10 frames/s (at the job's size) takes it all: busy, and
    // the queue is its 100 frames at 0.1 s each.
    h.connect("a", caps(false, 10.0));
    let mut pooled = caps(false, 10.0);
    pooled.pool = "gpu".into();
    pooled.tags = vec!["elsewhere".into()];
    h.connect("b", pooled);
    let s = h.core.load_summary();
    assert_eq!(node(&s, "", NodeState::Busy), Some(1), "{s:?}");
    let gpu_up = node(&s, "gpu", NodeState::Idle).unwrap_or(0)
        + node(&s, "gpu", NodeState::Busy).unwrap_or(0);
    assert_eq!(gpu_up, 1, "{s:?}");
    assert_eq!(
        node(&s, "gpu", NodeState::Lost),
        Some(0),
        "every state of a pool shows"
    );
    assert_eq!(s.queue_frames, 100);
    assert!((s.queue_seconds - 10.0).abs() < 1e-6, "{s:?}");
    // Done: nothing queued; the job counts as muxing.
    h.drain();
    let s = h.core.load_summary();
    assert_eq!((s.queue_frames, s.queue_seconds), (0, 0.0));
    assert!(s.jobs.contains(&(JobState::Muxing, 1)), "{s:?}");
    h.handle(Event::MuxDone {
        job,
        output: "out.mp4".into(),
    });
    assert!(h.core.load_summary().jobs.contains(&(JobState::Done, 1)));
    // Drained, then lost.
    h.handle(Event::Drain {
        name: "a".into(),
        now: false,
    });
    let s = h.core.load_summary();
    assert_eq!(node(&s, "", NodeState::Draining), Some(1));
    h.disconnect("a");
    let s = h.core.load_summary();
    assert_eq!(node(&s, "", NodeState::Lost), Some(1));
    assert_eq!(node(&s, "", NodeState::Draining), Some(0));
}

/// What `/metrics` counts when a chunk fails: the attempt's whole range
/// while it runs, nothing for a report of an attempt already over.
#[test]
fn a_failing_attempt_throws_back_its_whole_range_and_a_stale_one_nothing() {
    let mut h = Harness::new(CoreConfig::default());
    h.connect("a", caps(false, 10.0));
    h.submit(spec(50, ""));
    let (key, start, end) = h.held("a")[0];
    let epoch = h.nodes[h.ix("a")].chunks[0].epoch;
    h.progress("a", key, 5);
    assert_eq!(
        h.core.failing_attempt_frames(key, epoch),
        Some(end - start + 1)
    );
    assert_eq!(h.core.failing_attempt_frames(key, epoch + 1), None);
    h.fail("a", key, None);
    assert_eq!(h.core.failing_attempt_frames(key, epoch), None);
}

#[test]
fn the_fleet_view_keeps_the_busiest_jobs_when_there_are_too_many() {
    use super::views::MAX_FLEET_JOBS;
    let mut h = Harness::new(CoreConfig::default());
    // No node: every job waits. Priorities cycle, so the cut must pick.
    for i in 0..MAX_FLEET_JOBS + 5 {
        h.submit(spec(10, &format!(r#""priority":{}"#, i % 100)));
    }
    let f = h.core.fleet_view(h.now, None);
    assert_eq!(f.jobs.len(), MAX_FLEET_JOBS);
    assert_eq!(f.jobs_total, (MAX_FLEET_JOBS + 5) as u64);
    // Highest priority first, oldest first within one; the five cut are
    // of the lowest priority.
    let prios: Vec<u8> = f.jobs.iter().map(|j| j.priority).collect();
    assert!(prios.windows(2).all(|w| w[0] >= w[1]), "{prios:?}");
    assert_eq!(f.jobs[0].priority, 99);
    assert_eq!(f.jobs.last().unwrap().priority, 0);
    let zeros = f.jobs.iter().filter(|j| j.priority == 0).count();
    assert_eq!(zeros, (MAX_FLEET_JOBS + 5) / 100 + 1 - 5);
}
