//! Controllers: Fabrics commands, the admin command set and the discovery
//! controller. Filled in below.
