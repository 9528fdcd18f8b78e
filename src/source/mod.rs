//! Where config comes from: the bootstrap file (standalone) or etcd. A
//! source validates what it reads and hands it to the [`crate::store`].

pub mod document;
pub mod etcd;
pub mod file;
pub mod lkg;
