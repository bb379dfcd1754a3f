//! auth: the etcd Auth service and RBAC, differential against real etcd.
//!
//! `auth_matrix_matches_etcd` sets up the same users, roles, keys and
//! leases on real etcd 3.5 and on Strata, enables auth, then calls every
//! RPC of KV, Watch, Lease, Cluster, Maintenance and Auth three times:
//! without credentials, as a user without permission, and as a user with
//! permission (root for admin RPCs). Each outcome (gRPC code + message, or
//! a normalized success summary) must be the same on both servers and
//! equal to the outcome written down here, except the few cases listed in
//! `DIVERGES`, where Strata deliberately keeps a later etcd's fix (both
//! answers are written down). Other tests: auth state across
//! restart and snapshot, replication to a 3-member cluster (simple tokens
//! from one member work on another), JWT tokens, bad tokens.

use std::time::Duration;

use proto::authpb;
use proto::etcdserverpb::{
    self as pb, auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, watch_client::WatchClient,
};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::harness::{Cluster, Etcd, EtcdCluster, Strata};

/// Result of one call: Ok(summary) or Err((code, message)).
type Outcome = Result<String, (Code, String)>;

#[derive(Clone)]
struct Api {
    ch: Channel,
    token: Option<String>,
}

async fn channel(endpoint: &str) -> Channel {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match Channel::from_shared(endpoint.to_string())
            .unwrap()
            .timeout(Duration::from_secs(30))
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "connect {endpoint}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn out<T>(r: Result<tonic::Response<T>, tonic::Status>, f: impl FnOnce(T) -> String) -> Outcome {
    match r {
        Ok(r) => Ok(f(r.into_inner())),
        Err(s) => Err((s.code(), s.message().to_string())),
    }
}

fn ok<T>(_: T) -> String {
    "ok".into()
}

impl Api {
    fn as_user(&self, token: Option<&str>) -> Api {
        Api {
            ch: self.ch.clone(),
            token: token.map(str::to_string),
        }
    }
    fn req<T>(&self, m: T) -> Request<T> {
        let mut r = Request::new(m);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("token", t.parse().unwrap());
        }
        r
    }
    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.ch.clone())
    }
    fn auth(&self) -> AuthClient<Channel> {
        AuthClient::new(self.ch.clone())
    }
    fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.ch.clone())
    }
    fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.ch.clone())
    }
    fn maint(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.ch.clone())
    }

    async fn put(&self, k: &str, v: &str, lease: i64) -> Outcome {
        let r = self
            .kv()
            .put(self.req(pb::PutRequest {
                key: k.into(),
                value: v.into(),
                lease,
                ..Default::default()
            }))
            .await;
        out(r, ok)
    }

    async fn get(&self, k: &str, end: &str) -> Outcome {
        let r = self
            .kv()
            .range(self.req(pb::RangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            }))
            .await;
        out(r, |r| format!("count={}", r.count))
    }

    async fn authenticate(&self, name: &str, pw: &str) -> Result<String, (Code, String)> {
        let r = self
            .auth()
            .authenticate(pb::AuthenticateRequest {
                name: name.into(),
                password: pw.into(),
            })
            .await;
        out(r, |r| r.token)
    }

    async fn watch_first(&self, key: &str, end: &str) -> Outcome {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: key.into(),
                    range_end: end.into(),
                    ..Default::default()
                },
            )),
        })
        .await
        .unwrap();
        let s = tokio_stream::wrappers::ReceiverStream::new(rx);
        let r = WatchClient::new(self.ch.clone()).watch(self.req(s)).await;
        let mut stream = match r {
            Ok(s) => s.into_inner(),
            Err(s) => return Err((s.code(), s.message().to_string())),
        };
        let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("watch response in time");
        drop(tx);
        match first {
            Ok(Some(w)) => Ok(format!(
                "created={} canceled={} reason={:?}",
                w.created, w.canceled, w.cancel_reason
            )),
            Ok(None) => Ok("closed".into()),
            Err(s) => Err((s.code(), s.message().to_string())),
        }
    }

    async fn keepalive(&self, id: i64) -> Outcome {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::LeaseKeepAliveRequest { id }).await.unwrap();
        let s = tokio_stream::wrappers::ReceiverStream::new(rx);
        let r = self.lease().lease_keep_alive(self.req(s)).await;
        let mut stream = match r {
            Ok(s) => s.into_inner(),
            Err(s) => return Err((s.code(), s.message().to_string())),
        };
        let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("keepalive response in time");
        drop(tx);
        match first {
            Ok(Some(k)) => Ok(format!("ttl>0={}", k.ttl > 0)),
            Ok(None) => Ok("closed".into()),
            Err(s) => Err((s.code(), s.message().to_string())),
        }
    }
}

fn perm(t: authpb::permission::Type, key: &str, end: &str) -> Option<authpb::Permission> {
    Some(authpb::Permission {
        perm_type: t as i32,
        key: key.into(),
        range_end: end.into(),
    })
}

/// Users, roles, keys and leases before auth is enabled. Returns the three
/// leases with one attached key each (revoked later by the three callers).
async fn setup(api: &Api) -> Vec<i64> {
    let mut a = api.auth();
    for (u, p) in [("root", "rootpw"), ("alice", "alicepw"), ("bob", "bobpw")] {
        a.user_add(pb::AuthUserAddRequest {
            name: u.into(),
            password: p.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    a.user_add(pb::AuthUserAddRequest {
        name: "nopw".into(),
        options: Some(authpb::UserAddOptions { no_password: true }),
        ..Default::default()
    })
    .await
    .unwrap();
    a.role_add(pb::AuthRoleAddRequest { name: "kv".into() })
        .await
        .unwrap();
    a.role_grant_permission(pb::AuthRoleGrantPermissionRequest {
        name: "kv".into(),
        perm: perm(authpb::permission::Type::Readwrite, "k/", "k0"),
    })
    .await
    .unwrap();
    a.role_grant_permission(pb::AuthRoleGrantPermissionRequest {
        name: "kv".into(),
        perm: perm(authpb::permission::Type::Read, "z", "\0"),
    })
    .await
    .unwrap();
    a.user_grant_role(pb::AuthUserGrantRoleRequest {
        user: "alice".into(),
        role: "kv".into(),
    })
    .await
    .unwrap();
    // AuthEnable refuses until root has the root role.
    let r = a.auth_enable(pb::AuthEnableRequest {}).await;
    assert_eq!(
        out(r, ok),
        Err((
            Code::FailedPrecondition,
            "etcdserver: root user does not have root role".into()
        ))
    );
    a.user_grant_role(pb::AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await
    .unwrap();
    api.put("k/a", "1", 0).await.unwrap();
    api.put("secret", "s", 0).await.unwrap();
    let mut leases = Vec::new();
    for i in 0..3 {
        let id = api
            .lease()
            .lease_grant(pb::LeaseGrantRequest { ttl: 600, id: 0 })
            .await
            .unwrap()
            .into_inner()
            .id;
        api.put(&format!("k/l{i}"), "v", id).await.unwrap();
        leases.push(id);
    }
    a.auth_enable(pb::AuthEnableRequest {}).await.unwrap();
    leases
}

/// Run every RPC as each caller; returns (case name, outcome) in order.
async fn matrix(endpoint: &str) -> Vec<(String, Outcome)> {
    let anon = Api {
        ch: channel(endpoint).await,
        token: None,
    };
    let leases = setup(&anon).await;
    let mut res = Cases::default();
    // Authenticate: bad password, unknown user, no-password user, good.
    res.add(
        "Authenticate/bad-password",
        anon.authenticate("alice", "nope")
            .await
            .map(|_| "token".into()),
    );
    res.add(
        "Authenticate/unknown-user",
        anon.authenticate("carol", "x")
            .await
            .map(|_| "token".into()),
    );
    res.add(
        "Authenticate/no-password-user",
        anon.authenticate("nopw", "").await.map(|_| "token".into()),
    );
    let alice = anon.as_user(Some(&anon.authenticate("alice", "alicepw").await.unwrap()));
    let bob = anon.as_user(Some(&anon.authenticate("bob", "bobpw").await.unwrap()));
    let root = anon.as_user(Some(&anon.authenticate("root", "rootpw").await.unwrap()));
    // The token under the `authorization` key (what the JSON gateway sends).
    let mut r = Request::new(pb::RangeRequest {
        key: "k/a".into(),
        ..Default::default()
    });
    r.metadata_mut().insert(
        "authorization",
        alice.token.as_deref().unwrap().parse().unwrap(),
    );
    let r = anon.kv().range(r).await;
    res.add(
        "Range/authorization-metadata",
        out(r, |r| format!("count={}", r.count)),
    );
    let forged = anon.as_user(Some("forged.token"));
    res.add("Range/forged-token", forged.get("k/a", "").await);
    res.add("Put/forged-token", forged.put("k/a", "x", 0).await);

    // (label, caller for KV-level permission, caller for admin permission)
    let callers = [
        ("anon", &anon, &anon),
        ("bob", &bob, &bob),
        ("ok", &alice, &root),
    ];
    for (i, (who, kv, admin)) in callers.iter().enumerate() {
        let c = |n: &str| format!("{n}/{who}");
        res.add(c("Range"), kv.get("k/a", "").await);
        res.add(c("Range-prefix"), kv.get("k/", "k0").await);
        res.add(c("Range-outside"), kv.get("secret", "").await);
        res.add(c("Range-fromkey-z"), kv.get("z", "\0").await);
        res.add(c("Put"), kv.put("k/p", "v", 0).await);
        res.add(c("Put-readonly-range"), kv.put("z1", "v", 0).await);
        let r = kv
            .kv()
            .put(kv.req(pb::PutRequest {
                key: "k/p".into(),
                value: "w".into(),
                prev_kv: true,
                ..Default::default()
            }))
            .await;
        res.add(
            c("Put-prevkv"),
            out(r, |r| format!("prev={}", r.prev_kv.is_some())),
        );
        let r = kv
            .kv()
            .delete_range(kv.req(pb::DeleteRangeRequest {
                key: "k/nothing".into(),
                ..Default::default()
            }))
            .await;
        res.add(
            c("DeleteRange"),
            out(r, |r| format!("deleted={}", r.deleted)),
        );
        let txn = |cmp_key: &str, put_key: &str| pb::TxnRequest {
            compare: vec![pb::Compare {
                key: cmp_key.into(),
                target: pb::compare::CompareTarget::Version as i32,
                result: pb::compare::CompareResult::Greater as i32,
                target_union: Some(pb::compare::TargetUnion::Version(0)),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: put_key.into(),
                    value: "t".into(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        let r = kv.kv().txn(kv.req(txn("k/a", "k/t"))).await;
        res.add(c("Txn"), out(r, |r| format!("succeeded={}", r.succeeded)));
        let r = kv.kv().txn(kv.req(txn("secret", "k/t"))).await;
        res.add(
            c("Txn-compare-outside"),
            out(r, |r| format!("succeeded={}", r.succeeded)),
        );
        let ro = pb::TxnRequest {
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: "k/a".into(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let r = kv.kv().txn(kv.req(ro)).await;
        res.add(
            c("Txn-readonly"),
            out(r, |r| format!("succeeded={}", r.succeeded)),
        );
        let r = kv
            .kv()
            .compact(kv.req(pb::CompactionRequest {
                revision: 2 + i as i64,
                physical: false,
            }))
            .await;
        res.add(c("Compact"), out(r, ok));
        res.add(c("Watch"), kv.watch_first("k/", "k0").await);
        res.add(c("Watch-outside"), kv.watch_first("secret", "").await);
        res.add(
            c("Watch-fromkey-beyond-grant"),
            kv.watch_first("k/a", "\0").await,
        );

        // Lease.
        let r = kv
            .lease()
            .lease_grant(kv.req(pb::LeaseGrantRequest { ttl: 60, id: 0 }))
            .await;
        res.add(c("LeaseGrant"), out(r, |r| format!("ttl={}", r.ttl)));
        let r = kv
            .lease()
            .lease_time_to_live(kv.req(pb::LeaseTimeToLiveRequest {
                id: leases[i],
                keys: true,
            }))
            .await;
        res.add(
            c("LeaseTimeToLive"),
            out(r, |r| format!("keys={}", r.keys.len())),
        );
        res.add(c("LeaseKeepAlive"), kv.keepalive(leases[i]).await);
        let r = kv
            .lease()
            .lease_leases(kv.req(pb::LeaseLeasesRequest {}))
            .await;
        res.add(
            c("LeaseLeases"),
            out(r, |r| format!("n>0={}", !r.leases.is_empty())),
        );
        let r = kv
            .lease()
            .lease_revoke(kv.req(pb::LeaseRevokeRequest { id: leases[i] }))
            .await;
        res.add(c("LeaseRevoke"), out(r, ok));

        // Cluster.
        let r = admin
            .cluster()
            .member_list(admin.req(pb::MemberListRequest {
                linearizable: false,
            }))
            .await;
        res.add(
            c("MemberList"),
            out(r, |r| format!("n={}", r.members.len())),
        );
        let r = admin
            .cluster()
            .member_add(admin.req(pb::MemberAddRequest {
                peer_ur_ls: vec![format!("http://127.0.0.1:{}", 1 + i)],
                is_learner: true,
            }))
            .await;
        let added = r
            .as_ref()
            .ok()
            .and_then(|r| r.get_ref().member.as_ref().map(|m| m.id));
        let changed = r.is_ok();
        res.add(c("MemberAdd"), out(r, |r| format!("n={}", r.members.len())));
        if changed {
            conf_change_settled(&root).await;
        }
        let r = admin
            .cluster()
            .member_promote(admin.req(pb::MemberPromoteRequest {
                id: added.unwrap_or(12345),
            }))
            .await;
        res.add(c("MemberPromote"), out(r, ok));
        let r = admin
            .cluster()
            .member_remove(admin.req(pb::MemberRemoveRequest {
                id: added.unwrap_or(12345),
            }))
            .await;
        let changed = r.is_ok();
        res.add(
            c("MemberRemove"),
            out(r, |r| format!("n={}", r.members.len())),
        );
        if changed {
            conf_change_settled(&root).await;
        }

        // Update this member to its own peer URLs (a no-op that succeeds).
        let me = anon
            .cluster()
            .member_list(pb::MemberListRequest {
                linearizable: false,
            })
            .await
            .unwrap()
            .into_inner()
            .members
            .into_iter()
            .find(|m| !m.is_learner)
            .unwrap();
        let r = admin
            .cluster()
            .member_update(admin.req(pb::MemberUpdateRequest {
                id: me.id,
                peer_ur_ls: me.peer_ur_ls,
            }))
            .await;
        res.add(c("MemberUpdate"), out(r, ok));
        // Maintenance.
        let m = admin.maint();
        let r = m.clone().status(admin.req(pb::StatusRequest {})).await;
        res.add(c("Status"), out(r, ok));
        let r = m
            .clone()
            .alarm(admin.req(pb::AlarmRequest {
                action: pb::alarm_request::AlarmAction::Get as i32,
                member_id: 0,
                alarm: 0,
            }))
            .await;
        res.add(c("Alarm"), out(r, |r| format!("n={}", r.alarms.len())));
        let r = m
            .clone()
            .defragment(admin.req(pb::DefragmentRequest {}))
            .await;
        res.add(c("Defragment"), out(r, ok));
        let r = m.clone().hash(admin.req(pb::HashRequest {})).await;
        res.add(c("Hash"), out(r, ok));
        let r = m
            .clone()
            .hash_kv(admin.req(pb::HashKvRequest { revision: 0 }))
            .await;
        res.add(c("HashKV"), out(r, ok));
        let r = m.clone().snapshot(admin.req(pb::SnapshotRequest {})).await;
        let snap = match r {
            Ok(s) => {
                let mut s = s.into_inner();
                match tokio::time::timeout(Duration::from_secs(10), s.message()).await {
                    Ok(Ok(Some(_))) => Ok("chunk".to_string()),
                    Ok(Ok(None)) => Ok("empty".to_string()),
                    Ok(Err(e)) => Err((e.code(), e.message().to_string())),
                    Err(_) => panic!("snapshot stalled"),
                }
            }
            Err(e) => Err((e.code(), e.message().to_string())),
        };
        res.add(c("Snapshot"), snap);
        let me = m
            .clone()
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .member_id;
        let r = m
            .clone()
            .move_leader(admin.req(pb::MoveLeaderRequest { target_id: me + 1 }))
            .await;
        res.add(c("MoveLeader"), out(r, ok));

        // Auth.
        let mut a = admin.auth();
        let r = a.auth_status(admin.req(pb::AuthStatusRequest {})).await;
        res.add(
            c("AuthStatus"),
            out(r, |r| format!("enabled={}", r.enabled)),
        );
        let u = format!("u{i}");
        let r = a
            .user_add(admin.req(pb::AuthUserAddRequest {
                name: u.clone(),
                password: "pw".into(),
                ..Default::default()
            }))
            .await;
        res.add(c("UserAdd"), out(r, ok));
        let r = a
            .user_add(admin.req(pb::AuthUserAddRequest {
                name: "".into(),
                password: "pw".into(),
                ..Default::default()
            }))
            .await;
        res.add(c("UserAdd-empty"), out(r, ok));
        let r = a
            .user_add(admin.req(pb::AuthUserAddRequest {
                name: "alice".into(),
                password: "pw".into(),
                ..Default::default()
            }))
            .await;
        res.add(c("UserAdd-exists"), out(r, ok));
        let r = a
            .user_get(admin.req(pb::AuthUserGetRequest {
                name: "alice".into(),
            }))
            .await;
        res.add(c("UserGet-alice"), out(r, |r| r.roles.join(",")));
        let r = a
            .user_get(admin.req(pb::AuthUserGetRequest { name: "bob".into() }))
            .await;
        res.add(c("UserGet-bob"), out(r, |r| r.roles.join(",")));
        let r = a
            .user_get(admin.req(pb::AuthUserGetRequest {
                name: "nobody".into(),
            }))
            .await;
        res.add(c("UserGet-missing"), out(r, |r| r.roles.join(",")));
        let r = a.user_list(admin.req(pb::AuthUserListRequest {})).await;
        res.add(c("UserList"), out(r, |r| r.users.join(",")));
        let r = a
            .user_change_password(admin.req(pb::AuthUserChangePasswordRequest {
                name: u.clone(),
                password: "pw2".into(),
                ..Default::default()
            }))
            .await;
        res.add(c("UserChangePassword"), out(r, ok));
        let r = a
            .user_change_password(admin.req(pb::AuthUserChangePasswordRequest {
                name: "nobody".into(),
                password: "pw2".into(),
                ..Default::default()
            }))
            .await;
        res.add(c("UserChangePassword-missing"), out(r, ok));
        let role = format!("r{i}");
        let r = a
            .role_add(admin.req(pb::AuthRoleAddRequest { name: role.clone() }))
            .await;
        res.add(c("RoleAdd"), out(r, ok));
        let r = a
            .role_add(admin.req(pb::AuthRoleAddRequest { name: "".into() }))
            .await;
        res.add(c("RoleAdd-empty"), out(r, ok));
        let r = a
            .role_add(admin.req(pb::AuthRoleAddRequest { name: "kv".into() }))
            .await;
        res.add(c("RoleAdd-exists"), out(r, ok));
        let r = a
            .role_grant_permission(admin.req(pb::AuthRoleGrantPermissionRequest {
                name: role.clone(),
                perm: perm(authpb::permission::Type::Write, "w/", "w0"),
            }))
            .await;
        res.add(c("RoleGrantPermission"), out(r, ok));
        let r = a
            .role_grant_permission(admin.req(pb::AuthRoleGrantPermissionRequest {
                name: "nosuchrole".into(),
                perm: perm(authpb::permission::Type::Write, "w/", "w0"),
            }))
            .await;
        res.add(c("RoleGrantPermission-missing-role"), out(r, ok));
        let r = a
            .role_grant_permission(admin.req(pb::AuthRoleGrantPermissionRequest {
                name: role.clone(),
                perm: None,
            }))
            .await;
        res.add(c("RoleGrantPermission-no-perm"), out(r, ok));
        let r = a
            .role_grant_permission(admin.req(pb::AuthRoleGrantPermissionRequest {
                name: role.clone(),
                perm: perm(authpb::permission::Type::Read, "x/", "x0"),
            }))
            .await;
        res.add(c("RoleGrantPermission-second"), out(r, ok));
        let r = a
            .role_get(admin.req(pb::AuthRoleGetRequest { role: role.clone() }))
            .await;
        res.add(c("RoleGet-new"), out(r, |r| format!("{:?}", r.perm)));
        let r = a
            .user_add(admin.req(pb::AuthUserAddRequest {
                name: format!("{u}-nopw"),
                password: "".into(),
                ..Default::default()
            }))
            .await;
        res.add(c("UserAdd-empty-password"), out(r, ok));
        let r = a
            .role_get(admin.req(pb::AuthRoleGetRequest { role: "kv".into() }))
            .await;
        res.add(c("RoleGet-kv"), out(r, |r| format!("{:?}", r.perm)));
        let r = a
            .role_get(admin.req(pb::AuthRoleGetRequest {
                role: "root".into(),
            }))
            .await;
        res.add(c("RoleGet-root"), out(r, |r| format!("{:?}", r.perm)));
        let r = a.role_list(admin.req(pb::AuthRoleListRequest {})).await;
        res.add(c("RoleList"), out(r, |r| r.roles.join(",")));
        let r = a
            .user_grant_role(admin.req(pb::AuthUserGrantRoleRequest {
                user: u.clone(),
                role: role.clone(),
            }))
            .await;
        res.add(c("UserGrantRole"), out(r, ok));
        let r = a
            .user_grant_role(admin.req(pb::AuthUserGrantRoleRequest {
                user: u.clone(),
                role: "nosuchrole".into(),
            }))
            .await;
        res.add(c("UserGrantRole-missing-role"), out(r, ok));
        let r = a
            .user_revoke_role(admin.req(pb::AuthUserRevokeRoleRequest {
                name: u.clone(),
                role: "kv".into(),
            }))
            .await;
        res.add(c("UserRevokeRole-not-granted"), out(r, ok));
        let r = a
            .user_revoke_role(admin.req(pb::AuthUserRevokeRoleRequest {
                name: u.clone(),
                role: role.clone(),
            }))
            .await;
        res.add(c("UserRevokeRole"), out(r, ok));
        let r = a
            .role_revoke_permission(admin.req(pb::AuthRoleRevokePermissionRequest {
                role: role.clone(),
                key: "w/".into(),
                range_end: "w0".into(),
            }))
            .await;
        res.add(c("RoleRevokePermission"), out(r, ok));
        let r = a
            .role_revoke_permission(admin.req(pb::AuthRoleRevokePermissionRequest {
                role: role.clone(),
                key: "w/".into(),
                range_end: "w0".into(),
            }))
            .await;
        res.add(c("RoleRevokePermission-again"), out(r, ok));
        let r = a
            .role_delete(admin.req(pb::AuthRoleDeleteRequest { role: role.clone() }))
            .await;
        res.add(c("RoleDelete"), out(r, ok));
        let r = a
            .role_delete(admin.req(pb::AuthRoleDeleteRequest {
                role: "root".into(),
            }))
            .await;
        res.add(c("RoleDelete-root"), out(r, ok));
        let r = a
            .user_delete(admin.req(pb::AuthUserDeleteRequest { name: u.clone() }))
            .await;
        res.add(c("UserDelete"), out(r, ok));
        let r = a
            .user_delete(admin.req(pb::AuthUserDeleteRequest {
                name: "root".into(),
            }))
            .await;
        res.add(c("UserDelete-root"), out(r, ok));
        let r = a
            .user_revoke_role(admin.req(pb::AuthUserRevokeRoleRequest {
                name: "root".into(),
                role: "root".into(),
            }))
            .await;
        res.add(c("UserRevokeRole-root"), out(r, ok));
        let r = a.auth_enable(admin.req(pb::AuthEnableRequest {})).await;
        res.add(c("AuthEnable-again"), out(r, ok));
        if *who != "ok" {
            let r = a.auth_disable(admin.req(pb::AuthDisableRequest {})).await;
            res.add(c("AuthDisable"), out(r, ok));
        }
    }
    // Alice's token stays valid; root disables auth, then tokens are moot.
    let r = root
        .auth()
        .auth_disable(root.req(pb::AuthDisableRequest {}))
        .await;
    res.add("AuthDisable/ok", out(r, ok));
    res.add("Range/after-disable", anon.get("secret", "").await);
    res.add(
        "Authenticate/after-disable",
        anon.authenticate("alice", "alicepw")
            .await
            .map(|_| "token".into()),
    );
    res.0
}

/// Waits until raft itself counts the last membership change as applied,
/// by writing a key through `root` (answered only after a later raft entry
/// applied). etcd 3.5.1 answers a member change once its server applied it,
/// which can be before its raft loop has persisted that entry and advanced
/// raft's applied index; a second change proposed in that gap is turned
/// into an empty entry by raft and etcd waits for it until the client gives
/// up (seen under load as MemberUpdate timing out after MemberRemove).
/// Strata refuses such a change with "unhealthy cluster" instead of
/// hanging, so the matrix spaces its changes out for both servers.
async fn conf_change_settled(root: &Api) {
    root.put("member-change-settled", "", 0)
        .await
        .expect("write after a membership change");
}

/// The matrix's results, in order: (case name, outcome).
#[derive(Default)]
struct Cases(Vec<(String, Outcome)>);

impl Cases {
    fn add(&mut self, name: impl Into<String>, outcome: Outcome) {
        let name = name.into();
        eprintln!("  {name:40} {outcome:?}");
        self.0.push((name, outcome));
    }
}

/// Where Strata deliberately answers differently, and etcd 3.5.1's answer.
/// etcd 3.5 checks a watch whose range_end is "\0" (from key) as if it
/// watched the single key: a user allowed to read `k/a` may watch every
/// key from `k/a` on and see events on keys it may not read. Strata checks
/// the whole watched range, as it does for Range.
#[rustfmt::skip]
const DIVERGES: &[(&str, Expected)] = &[
    ("Watch-fromkey-beyond-grant/ok", Ok("created=true canceled=false reason=\"\"")),
    // etcd 3.5.1 shows a lease's keys to anyone; etcd 3.5.13 fixed that
    // (read permission on every attached key), and so does Strata.
    ("LeaseTimeToLive/anon", Ok("keys=1")),
    ("LeaseTimeToLive/bob", Ok("keys=1")),
];

/// A written-down outcome: a success summary, or (code, message).
type Expected = Result<&'static str, (Code, &'static str)>;

/// What etcd 3.5 answers, case by case (see `matrix` for the calls). Note
/// etcd 3.5's own quirks, kept on purpose: Compact, LeaseTimeToLive (with
/// keys), LeaseKeepAlive, Alarm and MoveLeader check nothing; AuthStatus
/// needs root; the Maintenance admin checks answer Unknown with the auth
/// package's `auth: ...` text; a no-password user's Authenticate says so.
#[rustfmt::skip]
const EXPECTED: &[(&str, Expected)] = &[
    ("Authenticate/bad-password", Err((Code::InvalidArgument, "etcdserver: authentication failed, invalid user ID or password"))),
    ("Authenticate/unknown-user", Err((Code::InvalidArgument, "etcdserver: authentication failed, invalid user ID or password"))),
    ("Authenticate/no-password-user", Err((Code::Unknown, "auth: authentication failed, password was given for no password user"))),
    ("Range/authorization-metadata", Ok("count=1")),
    ("Range/forged-token", Err((Code::Unauthenticated, "etcdserver: invalid auth token"))),
    ("Put/forged-token", Err((Code::Unauthenticated, "etcdserver: invalid auth token"))),
    ("Range/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("Range-prefix/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("Range-outside/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("Range-fromkey-z/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("Put/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("Put-readonly-range/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("Put-prevkv/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("DeleteRange/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("Txn/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("Txn-compare-outside/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("Txn-readonly/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("Compact/anon", Ok("ok")),
    ("Watch/anon", Ok("created=true canceled=true reason=\"rpc error: code = PermissionDenied desc = etcdserver: permission denied\"")),
    ("Watch-outside/anon", Ok("created=true canceled=true reason=\"rpc error: code = PermissionDenied desc = etcdserver: permission denied\"")),
    ("Watch-fromkey-beyond-grant/anon", Ok("created=true canceled=true reason=\"rpc error: code = PermissionDenied desc = etcdserver: permission denied\"")),
    ("LeaseGrant/anon", Ok("ttl=60")),
    ("LeaseTimeToLive/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("LeaseKeepAlive/anon", Ok("ttl>0=true")),
    ("LeaseLeases/anon", Ok("n>0=true")),
    ("LeaseRevoke/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("MemberList/anon", Ok("n=1")),
    ("MemberAdd/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("MemberPromote/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("MemberRemove/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("MemberUpdate/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("Status/anon", Ok("ok")),
    ("Alarm/anon", Ok("n=0")),
    ("Defragment/anon", Err((Code::Unknown, "auth: user name is empty"))),
    ("Hash/anon", Err((Code::Unknown, "auth: user name is empty"))),
    ("HashKV/anon", Err((Code::Unknown, "auth: user name is empty"))),
    ("Snapshot/anon", Err((Code::Unknown, "auth: user name is empty"))),
    ("MoveLeader/anon", Err((Code::FailedPrecondition, "etcdserver: bad leader transferee"))),
    ("AuthStatus/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserAdd/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserAdd-empty/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserAdd-exists/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserGet-alice/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserGet-bob/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserGet-missing/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserList/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserChangePassword/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserChangePassword-missing/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("RoleAdd/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("RoleAdd-empty/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("RoleAdd-exists/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("RoleGrantPermission/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("RoleGrantPermission-missing-role/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("RoleGrantPermission-no-perm/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("RoleGrantPermission-second/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("RoleGet-new/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserAdd-empty-password/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("RoleGet-kv/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("RoleGet-root/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("RoleList/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserGrantRole/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserGrantRole-missing-role/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserRevokeRole-not-granted/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserRevokeRole/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("RoleRevokePermission/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("RoleRevokePermission-again/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("RoleDelete/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("RoleDelete-root/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserDelete/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserDelete-root/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserRevokeRole-root/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("AuthEnable-again/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("AuthDisable/anon", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("Range/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("Range-prefix/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("Range-outside/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("Range-fromkey-z/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("Put/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("Put-readonly-range/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("Put-prevkv/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("DeleteRange/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("Txn/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("Txn-compare-outside/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("Txn-readonly/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("Compact/bob", Ok("ok")),
    ("Watch/bob", Ok("created=true canceled=true reason=\"rpc error: code = PermissionDenied desc = etcdserver: permission denied\"")),
    ("Watch-outside/bob", Ok("created=true canceled=true reason=\"rpc error: code = PermissionDenied desc = etcdserver: permission denied\"")),
    ("Watch-fromkey-beyond-grant/bob", Ok("created=true canceled=true reason=\"rpc error: code = PermissionDenied desc = etcdserver: permission denied\"")),
    ("LeaseGrant/bob", Ok("ttl=60")),
    ("LeaseTimeToLive/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("LeaseKeepAlive/bob", Ok("ttl>0=true")),
    ("LeaseLeases/bob", Ok("n>0=true")),
    ("LeaseRevoke/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("MemberList/bob", Ok("n=1")),
    ("MemberAdd/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("MemberPromote/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("MemberRemove/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("MemberUpdate/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("Status/bob", Ok("ok")),
    ("Alarm/bob", Ok("n=0")),
    ("Defragment/bob", Err((Code::Unknown, "auth: permission denied"))),
    ("Hash/bob", Err((Code::Unknown, "auth: permission denied"))),
    ("HashKV/bob", Err((Code::Unknown, "auth: permission denied"))),
    ("Snapshot/bob", Err((Code::Unknown, "auth: permission denied"))),
    ("MoveLeader/bob", Err((Code::FailedPrecondition, "etcdserver: bad leader transferee"))),
    ("AuthStatus/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("UserAdd/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("UserAdd-empty/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("UserAdd-exists/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("UserGet-alice/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("UserGet-bob/bob", Ok("")),
    ("UserGet-missing/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("UserList/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("UserChangePassword/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("UserChangePassword-missing/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("RoleAdd/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("RoleAdd-empty/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("RoleAdd-exists/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("RoleGrantPermission/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("RoleGrantPermission-missing-role/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("RoleGrantPermission-no-perm/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("RoleGrantPermission-second/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("RoleGet-new/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("UserAdd-empty-password/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("RoleGet-kv/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("RoleGet-root/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("RoleList/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("UserGrantRole/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("UserGrantRole-missing-role/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("UserRevokeRole-not-granted/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("UserRevokeRole/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("RoleRevokePermission/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("RoleRevokePermission-again/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("RoleDelete/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("RoleDelete-root/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("UserDelete/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("UserDelete-root/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("UserRevokeRole-root/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("AuthEnable-again/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("AuthDisable/bob", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("Range/ok", Ok("count=1")),
    ("Range-prefix/ok", Ok("count=4")),
    ("Range-outside/ok", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("Range-fromkey-z/ok", Ok("count=0")),
    ("Put/ok", Ok("ok")),
    ("Put-readonly-range/ok", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("Put-prevkv/ok", Ok("prev=true")),
    ("DeleteRange/ok", Ok("deleted=0")),
    ("Txn/ok", Ok("succeeded=true")),
    ("Txn-compare-outside/ok", Err((Code::PermissionDenied, "etcdserver: permission denied"))),
    ("Txn-readonly/ok", Ok("succeeded=true")),
    ("Compact/ok", Ok("ok")),
    ("Watch/ok", Ok("created=true canceled=false reason=\"\"")),
    ("Watch-outside/ok", Ok("created=true canceled=true reason=\"rpc error: code = PermissionDenied desc = etcdserver: permission denied\"")),
    ("Watch-fromkey-beyond-grant/ok", Ok("created=true canceled=true reason=\"rpc error: code = PermissionDenied desc = etcdserver: permission denied\"")),
    ("LeaseGrant/ok", Ok("ttl=60")),
    ("LeaseTimeToLive/ok", Ok("keys=1")),
    ("LeaseKeepAlive/ok", Ok("ttl>0=true")),
    ("LeaseLeases/ok", Ok("n>0=true")),
    ("LeaseRevoke/ok", Ok("ok")),
    ("MemberList/ok", Ok("n=1")),
    ("MemberAdd/ok", Ok("n=2")),
    ("MemberPromote/ok", Err((Code::FailedPrecondition, "etcdserver: can only promote a learner member which is in sync with leader"))),
    ("MemberRemove/ok", Ok("n=1")),
    ("MemberUpdate/ok", Ok("ok")),
    ("Status/ok", Ok("ok")),
    ("Alarm/ok", Ok("n=0")),
    ("Defragment/ok", Ok("ok")),
    ("Hash/ok", Ok("ok")),
    ("HashKV/ok", Ok("ok")),
    ("Snapshot/ok", Ok("chunk")),
    ("MoveLeader/ok", Err((Code::FailedPrecondition, "etcdserver: bad leader transferee"))),
    ("AuthStatus/ok", Ok("enabled=true")),
    ("UserAdd/ok", Ok("ok")),
    ("UserAdd-empty/ok", Err((Code::InvalidArgument, "etcdserver: user name is empty"))),
    ("UserAdd-exists/ok", Err((Code::FailedPrecondition, "etcdserver: user name already exists"))),
    ("UserGet-alice/ok", Ok("kv")),
    ("UserGet-bob/ok", Ok("")),
    ("UserGet-missing/ok", Err((Code::FailedPrecondition, "etcdserver: user name not found"))),
    ("UserList/ok", Ok("alice,bob,nopw,root,u2")),
    ("UserChangePassword/ok", Ok("ok")),
    ("UserChangePassword-missing/ok", Err((Code::FailedPrecondition, "etcdserver: user name not found"))),
    ("RoleAdd/ok", Ok("ok")),
    ("RoleAdd-empty/ok", Err((Code::InvalidArgument, "etcdserver: role name is empty"))),
    ("RoleAdd-exists/ok", Err((Code::FailedPrecondition, "etcdserver: role name already exists"))),
    ("RoleGrantPermission/ok", Ok("ok")),
    ("RoleGrantPermission-missing-role/ok", Err((Code::FailedPrecondition, "etcdserver: role name not found"))),
    ("RoleGrantPermission-no-perm/ok", Err((Code::InvalidArgument, "etcdserver: permission not given"))),
    ("RoleGrantPermission-second/ok", Ok("ok")),
    ("RoleGet-new/ok", Ok("[Permission { perm_type: Write, key: [119, 47], range_end: [119, 48] }, Permission { perm_type: Read, key: [120, 47], range_end: [120, 48] }]")),
    ("UserAdd-empty-password/ok", Ok("ok")),
    ("RoleGet-kv/ok", Ok("[Permission { perm_type: Readwrite, key: [107, 47], range_end: [107, 48] }, Permission { perm_type: Read, key: [122], range_end: [0] }]")),
    ("RoleGet-root/ok", Err((Code::FailedPrecondition, "etcdserver: role name not found"))),
    ("RoleList/ok", Ok("kv,r2")),
    ("UserGrantRole/ok", Ok("ok")),
    ("UserGrantRole-missing-role/ok", Err((Code::FailedPrecondition, "etcdserver: role name not found"))),
    ("UserRevokeRole-not-granted/ok", Err((Code::FailedPrecondition, "etcdserver: role is not granted to the user"))),
    ("UserRevokeRole/ok", Ok("ok")),
    ("RoleRevokePermission/ok", Ok("ok")),
    ("RoleRevokePermission-again/ok", Err((Code::FailedPrecondition, "etcdserver: permission is not granted to the role"))),
    ("RoleDelete/ok", Ok("ok")),
    ("RoleDelete-root/ok", Err((Code::InvalidArgument, "etcdserver: invalid auth management"))),
    ("UserDelete/ok", Ok("ok")),
    ("UserDelete-root/ok", Err((Code::InvalidArgument, "etcdserver: invalid auth management"))),
    ("UserRevokeRole-root/ok", Err((Code::InvalidArgument, "etcdserver: invalid auth management"))),
    ("AuthEnable-again/ok", Ok("ok")),
    ("AuthDisable/ok", Ok("ok")),
    ("Range/after-disable", Ok("count=1")),
    ("Authenticate/after-disable", Err((Code::FailedPrecondition, "etcdserver: authentication is not enabled"))),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_matrix_matches_etcd() {
    let etcd = Etcd::start(&["--bcrypt-cost", "4"]);
    let strata = Strata::start(&["--bcrypt-cost", "4"]);
    let _ = etcd.client().await;
    let e = tokio::time::timeout(Duration::from_secs(120), matrix(&etcd.endpoint))
        .await
        .expect("etcd matrix in time");
    let s = tokio::time::timeout(Duration::from_secs(120), matrix(&strata.endpoint))
        .await
        .expect("strata matrix in time");
    let mut diffs = Vec::new();
    assert_eq!(e.len(), s.len());
    for ((name, eo), (_, so)) in e.iter().zip(s.iter()) {
        println!("{name:40} etcd={eo:?}");
        if let Some((_, want)) = DIVERGES.iter().find(|(n, _)| n == name) {
            // A deliberate difference: etcd's answer is written down too.
            let want: Outcome = (*want)
                .map(str::to_string)
                .map_err(|(c, m)| (c, m.to_string()));
            assert_eq!(eo, &want, "etcd's answer to {name}");
            continue;
        }
        if eo != so {
            diffs.push(format!("{name}: etcd={eo:?} strata={so:?}"));
        }
    }
    assert!(diffs.is_empty(), "differences:\n{}", diffs.join("\n"));
    // Both agree; now both must say what is written down.
    assert_eq!(s.len(), EXPECTED.len(), "one expectation per case");
    for ((name, got), (want_name, want)) in s.iter().zip(EXPECTED.iter()) {
        assert_eq!(name, want_name);
        let want: Outcome = (*want)
            .map(str::to_string)
            .map_err(|(c, m)| (c, m.to_string()));
        assert_eq!(got, &want, "case {name}");
    }
}

/// Minimal auth setup through `api` (auth disabled): root, and alice with
/// readwrite on the prefix `k/`; then auth enabled.
async fn small_setup(api: &Api) {
    let mut a = api.auth();
    for (u, p) in [("root", "rootpw"), ("alice", "alicepw")] {
        a.user_add(pb::AuthUserAddRequest {
            name: u.into(),
            password: p.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    a.role_add(pb::AuthRoleAddRequest { name: "kv".into() })
        .await
        .unwrap();
    a.role_grant_permission(pb::AuthRoleGrantPermissionRequest {
        name: "kv".into(),
        perm: perm(authpb::permission::Type::Readwrite, "k/", "k0"),
    })
    .await
    .unwrap();
    for (u, r) in [("alice", "kv"), ("root", "root")] {
        a.user_grant_role(pb::AuthUserGrantRoleRequest {
            user: u.into(),
            role: r.into(),
        })
        .await
        .unwrap();
    }
    api.put("k/a", "1", 0).await.unwrap();
    a.auth_enable(pb::AuthEnableRequest {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_state_survives_restart_and_snapshot() {
    let mut s = Strata::start(&["--bcrypt-cost", "4", "--snapshot-count", "5"]);
    let anon = Api {
        ch: channel(&s.endpoint).await,
        token: None,
    };
    small_setup(&anon).await;
    let root = anon.as_user(Some(&anon.authenticate("root", "rootpw").await.unwrap()));
    // Enough entries for several snapshots (every 5 applied entries).
    for i in 0..20 {
        root.put(&format!("k/{i}"), "v", 0).await.unwrap();
    }
    let rev_before = root
        .auth()
        .auth_status(root.req(pb::AuthStatusRequest {}))
        .await
        .unwrap()
        .into_inner()
        .auth_revision;
    let snaps = std::fs::read_dir(s.data_dir.join("member/snap"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".snap")
        })
        .count();
    assert!(snaps > 0, "a snapshot was written");
    let old_token = root.token.clone();
    s.kill();
    s.restart();
    let anon = Api {
        ch: channel(&s.endpoint).await,
        token: None,
    };
    // Simple tokens live in memory only: the old one is gone.
    let stale = anon.as_user(old_token.as_deref());
    let r = stale.get("k/a", "").await;
    assert_eq!(
        r,
        Err((
            Code::Unauthenticated,
            "etcdserver: invalid auth token".into()
        ))
    );
    assert_eq!(
        anon.get("k/a", "").await,
        Err((
            Code::InvalidArgument,
            "etcdserver: user name is empty".into()
        ))
    );
    let alice = anon.as_user(Some(&anon.authenticate("alice", "alicepw").await.unwrap()));
    assert_eq!(alice.get("k/", "k0").await, Ok("count=21".into()));
    assert_eq!(
        alice.put("other", "x", 0).await,
        Err((
            Code::PermissionDenied,
            "etcdserver: permission denied".into()
        ))
    );
    assert_eq!(
        anon.authenticate("alice", "wrong").await,
        Err((
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password".into()
        ))
    );
    let root = anon.as_user(Some(&anon.authenticate("root", "rootpw").await.unwrap()));
    let st = root
        .auth()
        .auth_status(root.req(pb::AuthStatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(st.enabled);
    assert_eq!(st.auth_revision, rev_before);
    let roles = root
        .auth()
        .role_get(root.req(pb::AuthRoleGetRequest { role: "kv".into() }))
        .await
        .unwrap()
        .into_inner()
        .perm;
    assert_eq!(
        roles,
        vec![perm(authpb::permission::Type::Readwrite, "k/", "k0").unwrap()]
    );
}

/// Authenticate on member 0, then use the token on every member.
async fn token_across(endpoints: &[String]) -> Vec<Outcome> {
    let first = Api {
        ch: channel(&endpoints[0]).await,
        token: None,
    };
    // Wait for the cluster to serve.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while first.get("k/a", "").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "cluster not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    small_setup(&first).await;
    let token = first.authenticate("alice", "alicepw").await.unwrap();
    let mut res = Vec::new();
    for ep in endpoints {
        let api = Api {
            ch: channel(ep).await,
            token: Some(token.clone()),
        };
        // The Authenticate entry may not have applied there yet.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut r = api.get("k/a", "").await;
        while r.is_err() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            r = api.get("k/a", "").await;
        }
        res.push(r);
        res.push(api.put("x", "1", 0).await);
        let anon = api.as_user(None);
        res.push(anon.get("k/a", "").await);
    }
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_replicates_and_simple_tokens_work_on_every_member_like_etcd() {
    let etcd = EtcdCluster::start(3, &["--bcrypt-cost", "4"]);
    let e = tokio::time::timeout(Duration::from_secs(90), token_across(&etcd.endpoints))
        .await
        .expect("etcd in time");
    drop(etcd);
    let c = Cluster::start_with(3, &["--bcrypt-cost", "4"]);
    let eps: Vec<String> = (0..3).map(|i| c.endpoint(i)).collect();
    let s = tokio::time::timeout(Duration::from_secs(90), token_across(&eps))
        .await
        .expect("strata in time");
    assert_eq!(e, s, "etcd vs strata");
    for m in 0..3 {
        assert_eq!(
            s[3 * m],
            Ok("count=1".into()),
            "member {m} accepts the token"
        );
        assert_eq!(
            s[3 * m + 1],
            Err((
                Code::PermissionDenied,
                "etcdserver: permission denied".into()
            ))
        );
        assert_eq!(
            s[3 * m + 2],
            Err((
                Code::InvalidArgument,
                "etcdserver: user name is empty".into()
            ))
        );
    }
}

fn openssl(args: &[&str]) {
    let st = std::process::Command::new("openssl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(st.success(), "openssl {args:?}");
}

/// Authenticate, use the token, tamper with it; decode the claims.
async fn jwt_flow(endpoint: &str) -> (Vec<Outcome>, serde_json::Value) {
    let anon = Api {
        ch: channel(endpoint).await,
        token: None,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while anon.get("k/a", "").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    small_setup(&anon).await;
    let token = anon.authenticate("alice", "alicepw").await.unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT: {token}");
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    let alice = anon.as_user(Some(&token));
    // Tamper with the payload: claim to be root, keep the signature.
    let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&serde_json::json!({
            "username": "root",
            "revision": claims["revision"],
            "exp": claims["exp"],
        }))
        .unwrap(),
    );
    let forged = anon.as_user(Some(&format!(
        "{}.{}.{}",
        parts[0], forged_claims, parts[2]
    )));
    let mut res = vec![
        alice.get("k/a", "").await,
        alice.put("other", "x", 0).await,
        forged.get("k/a", "").await,
        forged.put("other", "x", 0).await,
    ];
    // A JWT carries the auth revision it was issued at: once root changes
    // the auth store, alice's KV requests fail until she authenticates again.
    let root = anon.as_user(Some(&anon.authenticate("root", "rootpw").await.unwrap()));
    root.auth()
        .role_add(root.req(pb::AuthRoleAddRequest {
            name: "bump".into(),
        }))
        .await
        .unwrap();
    res.push(alice.get("k/a", "").await);
    res.push(alice.put("k/a", "2", 0).await);
    let again = anon.as_user(Some(&anon.authenticate("alice", "alicepw").await.unwrap()));
    res.push(again.get("k/a", "").await);
    (res, claims)
}

/// Run [`jwt_flow`] on etcd and Strata with the same `--auth-token` and
/// compare: tokens work, permissions hold, forged tokens are refused, the
/// claims are etcd's.
async fn jwt_differential(flag: &str) {
    let etcd = Etcd::start(&["--bcrypt-cost", "4", "--auth-token", flag]);
    let strata = Strata::start(&["--bcrypt-cost", "4", "--auth-token", flag]);
    let (e, ec) = jwt_flow(&etcd.endpoint).await;
    let (s, sc) = jwt_flow(&strata.endpoint).await;
    // Deliberate difference: etcd 3.5.1 lets the auth package's error for a
    // stale auth revision escape untranslated (Unknown, "auth: revision in
    // header is old"); later etcd releases map it to the gRPC error below,
    // which clientv3 needs to re-authenticate, so Strata answers that.
    let stale: Outcome = Err((Code::Unknown, "auth: revision in header is old".into()));
    assert_eq!(
        &e[4..6],
        &[stale.clone(), stale],
        "etcd 3.5.1's stale-JWT answer"
    );
    assert_eq!((&e[..4], &e[6..]), (&s[..4], &s[6..]), "etcd vs strata");
    assert_eq!(s[0], Ok("count=1".into()));
    assert_eq!(
        s[1],
        Err((
            Code::PermissionDenied,
            "etcdserver: permission denied".into()
        ))
    );
    for r in &s[2..4] {
        assert_eq!(
            r,
            &Err((
                Code::Unauthenticated,
                "etcdserver: invalid auth token".into()
            ))
        );
    }
    for r in &s[4..6] {
        assert_eq!(
            r,
            &Err((
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old".into()
            ))
        );
    }
    assert_eq!(s[6], Ok("count=1".into()));
    for c in [&ec, &sc] {
        assert_eq!(c["username"], "alice");
        assert!(c["revision"].as_u64().unwrap() > 0);
        let exp = c["exp"].as_u64().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            exp > now + 200 && exp <= now + 301,
            "exp about 5 minutes away"
        );
    }
    assert_eq!(ec["revision"], sc["revision"], "same auth revision");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_rs256_tokens_like_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (priv_key, pub_key) = (dir.path().join("priv.pem"), dir.path().join("pub.pem"));
    let (pk, sk) = (pub_key.to_str().unwrap(), priv_key.to_str().unwrap());
    openssl(&["genrsa", "-out", sk, "2048"]);
    openssl(&["rsa", "-in", sk, "-pubout", "-out", pk]);
    jwt_differential(&format!(
        "jwt,pub-key={pk},priv-key={sk},sign-method=RS256,ttl=5m"
    ))
    .await;
    // A bad --auth-token is refused at startup.
    let bad = Strata::try_start_in(
        &dir.path().join("bad"),
        &["--auth-token", "jwt,sign-method=RS256,pub-key=/nonexistent"],
    );
    assert!(bad.is_err(), "bad --auth-token must not start");
}

/// ES256 with a SEC1 key (`openssl ecparam -genkey`), as etcd's docs make them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_es256_sec1_key_like_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (priv_key, pub_key) = (dir.path().join("priv.pem"), dir.path().join("pub.pem"));
    let (pk, sk) = (pub_key.to_str().unwrap(), priv_key.to_str().unwrap());
    openssl(&[
        "ecparam",
        "-genkey",
        "-noout",
        "-name",
        "prime256v1",
        "-out",
        sk,
    ]);
    openssl(&["ec", "-in", sk, "-pubout", "-out", pk]);
    let pem = std::fs::read_to_string(sk).unwrap();
    assert!(pem.contains("BEGIN EC PRIVATE KEY"), "a SEC1 key: {pem}");
    jwt_differential(&format!(
        "jwt,pub-key={pk},priv-key={sk},sign-method=ES256,ttl=5m"
    ))
    .await;
}

/// A simple token dies after `--auth-token-ttl` seconds without use; a
/// deleted user's token dies at once.
async fn token_lifetimes(endpoint: &str) -> Vec<Outcome> {
    let anon = Api {
        ch: channel(endpoint).await,
        token: None,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while anon.get("k/a", "").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    small_setup(&anon).await;
    let alice = anon.as_user(Some(&anon.authenticate("alice", "alicepw").await.unwrap()));
    let mut res = vec![alice.get("k/a", "").await];
    // Idle for well over the 1 s TTL (etcd's keeper ticks once a second).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    res.push(alice.get("k/a", "").await);
    let root = anon.as_user(Some(&anon.authenticate("root", "rootpw").await.unwrap()));
    let alice = anon.as_user(Some(&anon.authenticate("alice", "alicepw").await.unwrap()));
    res.push(alice.get("k/a", "").await);
    let r = root
        .auth()
        .user_delete(root.req(pb::AuthUserDeleteRequest {
            name: "alice".into(),
        }))
        .await;
    res.push(out(r, ok));
    res.push(alice.get("k/a", "").await);
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_token_ttl_and_user_delete_like_etcd() {
    let flags = ["--bcrypt-cost", "4", "--auth-token-ttl", "1"];
    let etcd = Etcd::start(&flags);
    let strata = Strata::start(&flags);
    let e = token_lifetimes(&etcd.endpoint).await;
    let s = token_lifetimes(&strata.endpoint).await;
    assert_eq!(e, s, "etcd vs strata");
    let invalid: Outcome = Err((
        Code::Unauthenticated,
        "etcdserver: invalid auth token".into(),
    ));
    assert_eq!(
        s,
        vec![
            Ok("count=1".into()),
            invalid.clone(),
            Ok("count=1".into()),
            Ok("ok".into()),
            invalid,
        ]
    );
}

/// A JWT issued by one member is accepted by every member (each verifies
/// the signature with the shared public key; nothing is registered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_from_one_member_works_on_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let (priv_key, pub_key) = (dir.path().join("priv.pem"), dir.path().join("pub.pem"));
    let (pk, sk) = (pub_key.to_str().unwrap(), priv_key.to_str().unwrap());
    openssl(&["genrsa", "-out", sk, "2048"]);
    openssl(&["rsa", "-in", sk, "-pubout", "-out", pk]);
    let flag = format!("jwt,pub-key={pk},priv-key={sk},sign-method=RS256,ttl=5m");
    let c = Cluster::start_with(3, &["--bcrypt-cost", "4", "--auth-token", &flag]);
    let eps: Vec<String> = (0..3).map(|i| c.endpoint(i)).collect();
    let s = tokio::time::timeout(Duration::from_secs(90), token_across(&eps))
        .await
        .expect("in time");
    for m in 0..3 {
        assert_eq!(s[3 * m], Ok("count=1".into()), "member {m} accepts the JWT");
        assert_eq!(
            s[3 * m + 1],
            Err((
                Code::PermissionDenied,
                "etcdserver: permission denied".into()
            ))
        );
    }
}
