//! Generated etcd v3 protobuf / gRPC types for Strata.
//!
//! This crate owns the wire interface only: the `.proto` sources in `proto/`
//! (field names and numbers, enum values, package, service and method names
//! match etcd's v3 API) and the Rust code that `build.rs` generates from them
//! with prost (messages) and tonic (clients and servers). It contains no
//! logic.
//!
//! Each protobuf package becomes a top-level module; they are siblings so
//! that the generated cross-package paths (e.g. `super::mvccpb::KeyValue`)
//! resolve.

/// The encoded `google.protobuf.FileDescriptorSet` of every `.proto` above,
/// for reflection (the JSON gateway decodes and encodes messages by field
/// name with it).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/etcd_descriptor_set.bin"));

/// MVCC records: `KeyValue` and watch `Event`.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// Auth records: users, roles and permissions.
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// The client-facing API: KV, Watch, Lease, Cluster, Maintenance and Auth.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// Strata's peer transport (raft messages between members); not etcd API.
pub mod raftpb {
    tonic::include_proto!("raftpb");
}

/// The Lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// The Election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

#[cfg(test)]
mod tests {
    use super::etcdserverpb::{PutRequest, RangeRequest};
    use prost::Message;

    #[test]
    fn range_request_key_is_field_1() {
        let req = RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        // tag = (1 << 3) | wire type 2 (length-delimited)
        assert_eq!(bytes, vec![0x0a, 0x01, b'a']);
        assert_eq!(RangeRequest::decode(bytes.as_slice()).unwrap(), req);
    }

    #[test]
    fn range_request_filters_round_trip() {
        let req = RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            limit: 7,
            sort_order: super::etcdserverpb::range_request::SortOrder::Descend as i32,
            max_create_revision: 3,
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        // max_create_revision is field 13, varint: tag = (13 << 3) | 0 = 0x68.
        assert!(bytes.ends_with(&[0x68, 0x03]));
        assert_eq!(RangeRequest::decode(bytes.as_slice()).unwrap(), req);
    }

    #[test]
    fn put_request_prev_kv_is_field_4() {
        let req = PutRequest {
            prev_kv: true,
            ..Default::default()
        };
        // tag = (4 << 3) | wire type 0 (varint)
        assert_eq!(req.encode_to_vec(), vec![0x20, 0x01]);
    }

    #[test]
    fn grpc_service_names() {
        assert_eq!(
            super::etcdserverpb::kv_server::SERVICE_NAME,
            "etcdserverpb.KV"
        );
        assert_eq!(
            super::etcdserverpb::watch_server::SERVICE_NAME,
            "etcdserverpb.Watch"
        );
        assert_eq!(super::v3lockpb::lock_server::SERVICE_NAME, "v3lockpb.Lock");
        assert_eq!(
            super::v3electionpb::election_server::SERVICE_NAME,
            "v3electionpb.Election"
        );
    }
}
