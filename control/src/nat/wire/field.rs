//! Byte offsets of the fields, from the start of the message (version byte).

use std::ops::Range;

pub const VERSION: usize = 0;
pub const TYPE: usize = 1;
pub const BODY: usize = 2;
/// The u64 that opens every body: sequence, round or request.
pub const LEADING: Range<usize> = 2..10;

pub mod observed_address {
    pub const SEQUENCE: std::ops::Range<usize> = super::LEADING;
    pub const ADDRESS: usize = 10;
}
pub mod add_address {
    pub const SEQUENCE: std::ops::Range<usize> = super::LEADING;
    pub const CANDIDATE: usize = 10;
}
pub mod remove_address {
    pub const SEQUENCE: std::ops::Range<usize> = super::LEADING;
    pub const LEN: usize = 10;
}
/// CONNECT_REQUEST and RELAY_REQUEST.
pub mod peer_request {
    pub const REQUEST: std::ops::Range<usize> = super::LEADING;
    pub const TARGET: std::ops::Range<usize> = 10..42;
    pub const LEN: usize = 42;
}
pub mod punch_me_now {
    pub const ROUND: std::ops::Range<usize> = super::LEADING;
    pub const REQUEST: std::ops::Range<usize> = 10..18;
    pub const PEER: std::ops::Range<usize> = 18..50;
    pub const ROLE: usize = 50;
    pub const FLAGS: usize = 51;
    pub const START_IN_MS: std::ops::Range<usize> = 52..56;
    pub const TOKEN: std::ops::Range<usize> = 56..72;
    pub const COUNT: usize = 72;
    pub const CANDIDATES: usize = 73;
}
pub mod forward_connect {
    pub const REQUEST: std::ops::Range<usize> = super::LEADING;
    pub const REQUESTER: std::ops::Range<usize> = 10..42;
    pub const TARGET: std::ops::Range<usize> = 42..74;
    pub const FLAGS: usize = 74;
    pub const DELAY_MS: std::ops::Range<usize> = 75..79;
    pub const COUNT: usize = 79;
    pub const CANDIDATES: usize = 80;
}
pub mod relay_at {
    pub const REQUEST: std::ops::Range<usize> = super::LEADING;
    pub const TARGET: std::ops::Range<usize> = 10..42;
    pub const BOOTSTRAP: std::ops::Range<usize> = 42..74;
    pub const ADDRESS: usize = 74;
}
pub mod relay_grant {
    pub const REQUEST: std::ops::Range<usize> = super::LEADING;
    pub const PEER: std::ops::Range<usize> = 10..42;
    pub const CHANNEL: std::ops::Range<usize> = 42..46;
    pub const LIFETIME_S: std::ops::Range<usize> = 46..50;
    pub const BYTE_LIMIT: std::ops::Range<usize> = 50..58;
    pub const RATE_LIMIT: std::ops::Range<usize> = 58..62;
    pub const LEN: usize = 62;
}
pub mod error {
    pub const REQUEST: std::ops::Range<usize> = super::LEADING;
    pub const CODE: std::ops::Range<usize> = 10..12;
    pub const REASON_LEN: usize = 12;
    pub const REASON: usize = 13;
}
pub mod report {
    pub const REQUEST: std::ops::Range<usize> = super::LEADING;
    pub const OUTCOME: usize = 10;
    pub const CONNECT_MS: std::ops::Range<usize> = 11..15;
    pub const LEN: usize = 15;
}
/// The one body without a leading u64: nothing to number, the delay is all it says.
pub mod reregister {
    pub const DELAY_MS: std::ops::Range<usize> = super::BODY..6;
    pub const LEN: usize = 6;
}
pub mod other_address {
    pub const ADDRESS: usize = super::BODY;
}
/// Within a candidate: kind, priority, then the address.
pub mod candidate {
    pub const KIND: usize = 0;
    pub const PRIORITY: std::ops::Range<usize> = 1..5;
    pub const ADDRESS: usize = 5;
}
/// Within an address: family, ip, then the port.
pub mod address {
    pub const FAMILY: usize = 0;
    pub const IP: usize = 1;
    pub const V4_LEN: usize = 1 + 4 + 2;
    pub const V6_LEN: usize = 1 + 16 + 2;
}
