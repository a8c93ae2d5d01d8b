//! The apply path allocates nothing per event. Applying a batch allocates its result vector, and
//! the in-memory store's containers grow now and then (a per-account vector doubles, a B-tree
//! node splits); averaged over many batches that is a small fraction of an allocation per event,
//! where a single per-event allocation would count at least one.

#![allow(unsafe_code)] // A counting global allocator is the only way to observe allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use rust_decimal::Decimal;
use tally_state_machine::constants::EVENTS_PER_BATCH_MAX;
use tally_state_machine::{
    AccountFlags, Batch, Currency, MemoryStorage, NewAccount, NewLedger, NewTransfer, Operation, StateMachine,
    TransferFlags,
};

struct CountingAllocator;

thread_local! {
    /// Allocations made by this thread; other test-harness threads do not disturb the count.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) }
    }
    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        unsafe { System.realloc(pointer, layout, size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const ACCOUNT_COUNT: u64 = 1_000;
const ACCOUNT_CAPACITY: usize = 1_000;

/// A batch of transfers between pseudo-random accounts, every fourth one pending and linked in
/// pairs, so chains (with their undo log) and the pending index are on the measured path.
fn transfer_batch(first_id: u128) -> Vec<NewTransfer> {
    (0..EVENTS_PER_BATCH_MAX as u64)
        .map(|index| {
            let debit = 1 + (index * 7_919) % ACCOUNT_COUNT;
            let credit = 1 + (debit + 1 + index % 13) % ACCOUNT_COUNT;
            let mut flags = TransferFlags::empty();
            if index % 4 == 0 {
                flags |= TransferFlags::PENDING;
            }
            if index % 2 == 0 {
                flags |= TransferFlags::LINKED;
            }
            NewTransfer {
                id: first_id + u128::from(index),
                debit_account_id: u128::from(debit),
                credit_account_id: u128::from(credit),
                amount: Some(Decimal::new(125, 2)),
                ledger: 1,
                code: 1,
                flags,
                timeout_seconds: if index % 4 == 0 { 3_600 } else { 0 },
                ..NewTransfer::default()
            }
        })
        .collect()
}

#[test]
fn applying_a_batch_allocates_nothing_per_event() {
    let mut ledger = StateMachine::open(MemoryStorage::with_capacity(ACCOUNT_CAPACITY, 64 * EVENTS_PER_BATCH_MAX));
    let mut timestamp = 1_000;
    let mut apply = |ledger: &mut StateMachine<MemoryStorage>, operation| {
        let batch = Batch::new(timestamp, operation);
        ledger.apply(&batch).expect("accepted");
        timestamp = ledger.timestamp_last() + 1;
    };
    let ledgers = vec![NewLedger { id: 1, currency: Currency(*b"EUR"), scale: 2, ..NewLedger::default() }];
    apply(&mut ledger, Operation::CreateLedgers(ledgers));
    let accounts = (1..=ACCOUNT_COUNT)
        .map(|id| NewAccount {
            id: u128::from(id),
            ledger: 1,
            code: 1,
            flags: AccountFlags::HISTORY,
            ..NewAccount::default()
        })
        .collect();
    apply(&mut ledger, Operation::CreateAccounts(accounts));
    // Warm up: per-account vectors and the digest buffer reach a steady size.
    for round in 0..8u128 {
        apply(&mut ledger, Operation::CreateTransfers(transfer_batch(1 + round * 10_000)));
    }

    const MEASURED_BATCHES: u128 = 24;
    let before = allocations();
    for round in 0..MEASURED_BATCHES {
        apply(&mut ledger, Operation::CreateTransfers(transfer_batch(1_000_000 + round * 10_000)));
    }
    let events = MEASURED_BATCHES as f64 * EVENTS_PER_BATCH_MAX as f64;
    let per_event = (allocations() - before) as f64 / events;
    eprintln!("{per_event:.4} allocations per applied transfer");
    assert!(per_event < 0.1, "applying transfers made {per_event:.4} allocations per event");
}
