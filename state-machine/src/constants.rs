//! Every limit of the ledger, named once. Each is checked where data enters, with a specific error.

/// Events in one batch. 8,190 transfers of 128 bytes keep a batch just under 1 MiB, which bounds the
/// size of one log entry, of one apply step, and of the results a client waits for.
pub const EVENTS_PER_BATCH_MAX: usize = 8_190;

/// Pending transfers released by one `expire_pending_transfers` batch. More due expiries wait for the
/// next such batch, so one apply step stays bounded however many transfers time out at once.
pub const EXPIRIES_PER_BATCH_MAX: usize = 8_190;

/// Decimal places a ledger may keep below its currency unit (18 covers wei-style sub-units).
pub const LEDGER_SCALE_MAX: u8 = 18;

/// The largest amount, and the largest balance, in a ledger's minor units: the largest mantissa of a
/// `rust_decimal::Decimal` (2^96 - 1). Every balance therefore converts back to an exact decimal at
/// the ledger's scale, and sums of two balances never overflow the `u128` they are kept in.
pub const AMOUNT_UNITS_MAX: u128 = (1 << 96) - 1;

/// Ids in one lookup request.
pub const LOOKUP_IDS_MAX: usize = 8_190;

/// Records returned by one query page.
pub const QUERY_RESULTS_MAX: u32 = 8_190;

/// Records one query page may examine before it stops and hands back a cursor, so a filter that
/// matches little cannot turn one request into a scan of the whole ledger.
pub const QUERY_SCAN_MAX: usize = 65_536;

/// Cluster timestamps are nanoseconds since the Unix epoch; transfer timeouts are whole seconds.
pub const NANOSECONDS_PER_SECOND: u64 = 1_000_000_000;
