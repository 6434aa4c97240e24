//! Rust code for etcd's v3 gRPC messages and clients, generated from `src/etcd/proto/` by
//! `scripts/gen-etcd-proto.sh` and checked in, so that building needs no protoc. Do not edit
//! the generated files by hand; edit the protos and rerun the script.

#[allow(clippy::all, clippy::pedantic, dead_code)]
pub mod etcdserverpb;
#[allow(clippy::all, clippy::pedantic, dead_code)]
pub mod mvccpb;
