//! # Benchmark workloads
//!
//! Deterministic, seeded generators of ledgers and transfer batches, shared by the criterion
//! benches in `benches/`. Generating a batch is kept out of every measurement: benches build
//! batches first and time only `StateMachine::apply`.
//!
//! # Layout
//! - [`Workload`]: the shape of a run (accounts, batch size, mix of transfer kinds).
//! - [`Generator`]: turns a workload and a seed into setup batches and transfer batches.
//! - [`Clock`]: stamps batches with strictly increasing cluster timestamps.
//! - [`Ledger`]: an in-memory state machine with its generator and clock, ready to be measured.
//! - [`run_on_threads`]: the runtime the load generators (`tally-bench`, `etcd-load`) run on.

use std::future::Future;
use std::process::ExitCode;

use rust_decimal::Decimal;
use tally_state_machine::constants::EVENTS_PER_BATCH_MAX;
use tally_state_machine::{
    AccountFlags, Batch, Currency, MemoryStorage, NewAccount, NewLedger, NewTransfer, Operation, StateMachine, Storage,
    TransferFlags,
};

/// The shape of a benchmark run.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub accounts: u64,
    pub transfers_per_batch: usize,
    /// Percent of transfers that are pending (with a one-hour timeout); the same share of later
    /// transfers post an earlier pending transfer.
    pub pending_percent: u64,
    /// Percent of transfers linked to the next one, in pairs.
    pub linked_percent: u64,
}

impl Workload {
    /// Single-phase transfers between uniformly chosen accounts, as in the target.
    pub const SINGLE_PHASE: Workload =
        Workload { accounts: 10_000, transfers_per_batch: EVENTS_PER_BATCH_MAX, pending_percent: 0, linked_percent: 0 };

    /// A card-style mix: pending authorisations, their captures, and linked pairs.
    pub const MIXED: Workload = Workload {
        accounts: 10_000,
        transfers_per_batch: EVENTS_PER_BATCH_MAX,
        pending_percent: 20,
        linked_percent: 10,
    };
}

/// A seeded generator of batches for a workload.
#[derive(Debug)]
pub struct Generator {
    workload: Workload,
    state: u64,
    next_id: u128,
    /// Pending transfers not yet posted, oldest first.
    open_pending: std::collections::VecDeque<u128>,
}

pub const LEDGER_ID: u32 = 1;

impl Generator {
    pub fn new(workload: Workload, seed: u64) -> Generator {
        Generator { workload, state: seed | 1, next_id: 1, open_pending: Default::default() }
    }

    /// xorshift64*: fast, and good enough to spread transfers over accounts.
    fn next_random(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn account(&mut self) -> u128 {
        u128::from(1 + self.next_random() % self.workload.accounts)
    }

    /// The ledger and its accounts, as operations to apply before any transfer batch.
    pub fn setup(&self) -> Vec<Operation> {
        let ledger = NewLedger { id: LEDGER_ID, currency: Currency(*b"EUR"), scale: 2, ..NewLedger::default() };
        let accounts: Vec<_> = (1..=self.workload.accounts)
            .map(|id| NewAccount {
                id: u128::from(id),
                ledger: LEDGER_ID,
                code: 1,
                flags: AccountFlags::empty(),
                ..NewAccount::default()
            })
            .collect();
        let mut operations = vec![Operation::CreateLedgers(vec![ledger])];
        operations.extend(accounts.chunks(EVENTS_PER_BATCH_MAX).map(|chunk| Operation::CreateAccounts(chunk.to_vec())));
        operations
    }

    /// The next batch of transfers.
    pub fn transfers(&mut self) -> Operation {
        let mut events = Vec::with_capacity(self.workload.transfers_per_batch);
        while events.len() < self.workload.transfers_per_batch {
            let roll = self.next_random() % 100;
            let id = self.next_id;
            self.next_id += 1;
            if roll < self.workload.pending_percent
                && let Some(pending_id) = self.open_pending.pop_front()
            {
                events.push(NewTransfer {
                    id,
                    pending_id,
                    flags: TransferFlags::POST_PENDING_TRANSFER,
                    ..NewTransfer::default()
                });
                continue;
            }
            let debit_account_id = self.account();
            let mut credit_account_id = self.account();
            if credit_account_id == debit_account_id {
                credit_account_id = debit_account_id % u128::from(self.workload.accounts) + 1;
            }
            let mut transfer = NewTransfer {
                id,
                debit_account_id,
                credit_account_id,
                amount: Some(Decimal::new(i64::try_from(1 + self.next_random() % 100_000).expect("small"), 2)),
                ledger: LEDGER_ID,
                code: 1,
                ..NewTransfer::default()
            };
            if roll >= 100 - self.workload.pending_percent {
                transfer.flags |= TransferFlags::PENDING;
                transfer.timeout_seconds = 3_600;
                self.open_pending.push_back(id);
            }
            let linked = roll < self.workload.linked_percent && events.len() + 2 < self.workload.transfers_per_batch;
            if linked {
                transfer.flags |= TransferFlags::LINKED;
            }
            events.push(transfer);
        }
        Operation::CreateTransfers(events)
    }
}

/// Wraps operations into batches with strictly increasing timestamps.
#[derive(Debug)]
pub struct Clock {
    pub next_timestamp: u64,
}

impl Clock {
    pub fn batch(&mut self, operation: Operation) -> Batch {
        let events = operation.event_count().max(1) as u64;
        let batch = Batch::new(self.next_timestamp, operation);
        self.next_timestamp += events + 1_000;
        batch
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock { next_timestamp: 1_700_000_000_000_000_000 }
    }
}

/// A ledger under measurement: the state machine, and the generator and clock that feed it.
#[derive(Debug)]
pub struct Ledger<S: Storage = MemoryStorage> {
    pub state_machine: StateMachine<S>,
    generator: Generator,
    clock: Clock,
    pub transfers_applied: usize,
}

impl Ledger<MemoryStorage> {
    /// A fresh in-memory ledger with the workload's accounts and `transfers` already applied.
    pub fn preloaded(workload: Workload, transfers: usize) -> Ledger<MemoryStorage> {
        Ledger::preloaded_on(MemoryStorage::new(), workload, transfers)
    }
}

impl<S: Storage> Ledger<S> {
    /// A fresh ledger on `storage` with the workload's accounts and `transfers` already applied.
    pub fn preloaded_on(storage: S, workload: Workload, transfers: usize) -> Ledger<S> {
        let mut ledger = Ledger {
            state_machine: StateMachine::open(storage),
            generator: Generator::new(workload, 0x5EED),
            clock: Clock::default(),
            transfers_applied: 0,
        };
        for operation in ledger.generator.setup() {
            ledger.state_machine.apply(&ledger.clock.batch(operation)).expect("setup batch accepted");
        }
        while ledger.transfers_applied < transfers {
            let batch = ledger.batches(1);
            ledger.apply_all(&batch);
        }
        ledger
    }

    /// The next `count` transfer batches, stamped and ready to apply.
    pub fn batches(&mut self, count: usize) -> Vec<Batch> {
        (0..count).map(|_| self.clock.batch(self.generator.transfers())).collect()
    }

    /// Applies batches, checking that every transfer succeeded (a benchmark of failures would
    /// measure the wrong thing).
    pub fn apply_all(&mut self, batches: &[Batch]) {
        for batch in batches {
            let outcome = self.state_machine.apply(batch).expect("batch accepted");
            assert!(outcome.results().iter().all(|code| code.is_success()), "a benchmark transfer failed");
            self.transfers_applied += outcome.results().len();
        }
    }
}

/// Runs a load generator's `main` on a tokio runtime of `threads` worker threads (at least 1); with
/// 1, every task runs on the calling thread (a current-thread runtime). A load generator usually
/// shares its host with the cluster it measures, and one thread takes the least from it: no
/// wake-ups across threads, no contention on its own locks.
pub fn run_on_threads(program: &str, threads: usize, main: impl Future<Output = ExitCode>) -> ExitCode {
    assert!(threads >= 1, "a runtime needs a thread");
    let runtime = match threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        threads => tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build(),
    };
    match runtime {
        Ok(runtime) => runtime.block_on(main),
        Err(error) => {
            eprintln!("{program}: starting the runtime failed: {error}");
            ExitCode::from(2)
        }
    }
}
