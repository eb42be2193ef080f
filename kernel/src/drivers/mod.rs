//! Device glue: the environments (HALs) our driver crates run against.

pub mod nvme;
pub mod virtio;
pub mod virtio_net;
