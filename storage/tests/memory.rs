//! Not a test: what the replicated state costs in memory per task, measured
//! with a counting allocator (heap bytes live after building it), by
//! structure. `cargo test -p goat-storage --release --test memory -- --ignored --nocapture`
//! (docs/benchmarks.md, memory of a manager).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use goat_storage::fsm::{ClusterState, Command};
use goat_storage::model::{EngineStatus, Health, ObservedState, Resources, TaskReport};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

#[test]
#[ignore]
fn print_state_memory_per_task() {
    let tasks: u64 = std::env::var("TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let nodes = 1_000u64;
    let mut state = ClusterState::default();
    for n in 0..nodes {
        state.apply(&Command::UpsertNode {
            name: format!("sim-{n:05}"),
            capacity: Resources { cpu: 64.0, memory: 256 << 30, disk: 1 << 40 },
            engine: EngineStatus { healthy: true, error: None },
            at: 1,
        });
    }
    state.take_dirty();
    let before = live();
    for i in 0..tasks {
        let id = uuid::Uuid::from_u64_pair(7, i);
        // The benchmark's spec: a name, an image, 0.01 cpu.
        let spec = serde_json::from_value(
            serde_json::json!({"name": format!("t{i}"), "image": "goat-echo:latest", "cpu": 0.01}),
        )
        .unwrap();
        state.begin_entry_by(3 * i + 1, 1, 1);
        state.apply(&Command::SubmitTask { task_id: id, spec, at: 10 });
        let node = format!("sim-{:05}", i % nodes);
        state.begin_entry_by(3 * i + 2, 1, 1);
        state.apply(&Command::PlaceTask { task_id: id, node: node.clone(), at: 11 });
        state.begin_entry_by(3 * i + 3, 1, 1);
        state.apply(&Command::ReportTask {
            node,
            report: TaskReport {
                task_id: id,
                generation: 1,
                state: ObservedState::Running,
                container_id: Some(format!("sim-{id}")),
                exit_code: None,
                host_ports: Default::default(),
                health: Health::Unknown,
                restarts: 0,
                reason: None,
            },
            at: 12,
        });
        if i % 1024 == 0 {
            state.take_dirty();
        }
    }
    state.take_dirty();
    let total = live() - before;
    let task = state.tasks.values().next().unwrap();
    let events = task.events.len();
    let encoded = bincode::serde::encode_to_vec(task, bincode::config::standard()).unwrap().len();
    let spec_json = serde_json::to_vec(&task.spec).unwrap().len();
    println!(
        "{tasks} running tasks on {nodes} nodes: {:.1} MiB of heap, {} B per task \
         (Task struct {} B inline, {events} events each; bincode {encoded} B per task; spec as JSON {spec_json} B)",
        total as f64 / (1 << 20) as f64,
        total / tasks as isize,
        std::mem::size_of::<goat_storage::model::Task>(),
    );
    // The tasks map as it was before tasks were boxed (values inline in the
    // B-tree's nodes) against the same tasks boxed, with the ids in order
    // (as above) and in a scrambled order (random v4 ids, as the API makes).
    let inline_map = |scramble: bool| -> isize {
        let before = live();
        // One insert at a time, as applying does (`collect` would bulk-build
        // full nodes from the sorted ids).
        let mut map = std::collections::BTreeMap::new();
        for (id, t) in &state.tasks {
            map.insert(scrambled(*id, scramble), (**t).clone());
        }
        let used = live() - before;
        drop(map);
        used
    };
    let boxed_map = |scramble: bool| -> isize {
        let before = live();
        let mut map = goat_storage::fsm::Tasks::new();
        for (id, t) in &state.tasks {
            map.insert(scrambled(*id, scramble), t.clone());
        }
        let used = live() - before;
        drop(map);
        used
    };
    for scramble in [false, true] {
        let (inline, boxed) = (inline_map(scramble), boxed_map(scramble));
        println!(
            "  the tasks map alone, ids {}: {} B per task with tasks inline in the B-tree, {} B boxed ({:.2}x)",
            if scramble { "scrambled" } else { "in order" },
            inline / tasks as isize,
            boxed / tasks as isize,
            boxed as f64 / inline as f64,
        );
    }
    println!(
        "  sizes: Task {} B, TaskSpec {} B, TaskEvent {} B",
        std::mem::size_of::<goat_storage::model::Task>(),
        std::mem::size_of::<goat_storage::model::TaskSpec>(),
        std::mem::size_of::<goat_storage::model::TaskEvent>(),
    );
    let before_events = live();
    for task in state.tasks.values_mut() {
        task.events = Vec::new();
    }
    println!("  of which the tasks' event histories: {} B per task", (before_events - live()) / tasks as isize);
}

/// `id`, or a value spread over the id space as random v4 ids are (a
/// bijection, so no two tasks collide).
fn scrambled(id: uuid::Uuid, scramble: bool) -> uuid::Uuid {
    if !scramble {
        return id;
    }
    let (hi, lo) = id.as_u64_pair();
    uuid::Uuid::from_u64_pair(hi, lo.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}
