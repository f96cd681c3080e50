//! The admin address: status over gRPC, health, reflection; and bad input on
//! the internal Raft address.

mod common;

use common::TestCluster;
use deckhand::proto::admin::admin_client::AdminClient;
use deckhand::proto::admin::StatusRequest;
use deckhand::proto::raft::raft_service_client::RaftServiceClient;
use deckhand::proto::raft::RaftPayload;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_address_serves_status_health_and_reflection() {
    let cluster = TestCluster::start(1).await;
    let leader = cluster.wait_for_leader().await;
    let admin = channel(cluster.nodes[&leader].admin_addr()).await;

    let status = AdminClient::new(admin.clone())
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.node_id, 1);
    assert_eq!(status.role, "leader");
    assert_eq!(status.leader_id, Some(1));
    assert_eq!(status.members.len(), 1);
    assert!(status.members[0].voter);

    let mut health = HealthClient::new(admin.clone());
    for service in ["", "deckhand.admin.v1.Admin"] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            resp.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }

    let mut reflection = ServerReflectionClient::new(admin);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("one response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response: {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["deckhand.admin.v1.Admin", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_raft_address_is_invalid_argument() {
    let cluster = TestCluster::start(1).await;
    let leader = cluster.wait_for_leader().await;
    let mut raft = RaftServiceClient::new(channel(cluster.nodes[&leader].raft_addr()).await);
    let garbage = RaftPayload {
        data: b"\xff not json".to_vec(),
        seq: 1,
    };
    let err = raft
        .append_entries(garbage.clone())
        .await
        .expect_err("rejected");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let err = raft.vote(garbage.clone()).await.expect_err("rejected");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // On the AppendEntries stream: the same status, and the stream ends.
    let answers = raft
        .append_stream(tokio_stream::iter(vec![garbage.clone(), garbage]))
        .await
        .expect("the stream opens");
    let mut answers = answers.into_inner();
    let err = answers
        .next()
        .await
        .expect("an answer")
        .expect_err("rejected");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(
        answers.next().await.is_none(),
        "the first error ends the stream"
    );
    // The node is unharmed.
    assert_eq!(cluster.wait_for_leader().await, leader);
    cluster.shutdown().await;
}

/// Every request on the AppendEntries stream gets one answer, in order,
/// echoing its number: here a stranger's AppendEntries at term 0, which
/// the leader refuses by naming its own vote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_append_stream_answers_each_request_in_order_with_its_number() {
    use deckhand::raft::TypeConfig;
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
    let cluster = TestCluster::start(1).await;
    let leader = cluster.wait_for_leader().await;
    let mut raft = RaftServiceClient::new(channel(cluster.nodes[&leader].raft_addr()).await);
    let stale = AppendEntriesRequest::<TypeConfig> {
        vote: deckhand::raft::Vote::new(0, 99),
        prev_log_id: None,
        leader_commit: None,
        entries: vec![],
    };
    let data = serde_json::to_vec(&stale).expect("encodes");
    let requests: Vec<RaftPayload> = [7, 8, 42]
        .into_iter()
        .map(|seq| RaftPayload {
            data: data.clone(),
            seq,
        })
        .collect();
    let mut answers = raft
        .append_stream(tokio_stream::iter(requests))
        .await
        .expect("the stream opens")
        .into_inner();
    for seq in [7, 8, 42] {
        let answer = answers.next().await.expect("an answer").expect("answered");
        assert_eq!(answer.seq, seq);
        let response: AppendEntriesResponse<TypeConfig> =
            serde_json::from_slice(&answer.data).expect("decodes");
        assert!(
            matches!(response, AppendEntriesResponse::HigherVote(_)),
            "a stale sender is told the higher vote: {response:?}"
        );
    }
    assert!(answers.next().await.is_none(), "ends when the requests end");
    assert_eq!(cluster.wait_for_leader().await, leader);
    cluster.shutdown().await;
}

/// A message of the wrong shape for the admin methods it is sent to.
#[derive(Clone, PartialEq, prost::Message)]
struct Bogus {
    #[prost(string, tag = "1")]
    text: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_invalid_arguments() {
    let cluster = common::TestCluster::start(1).await;
    let leader = cluster.wait_for_leader().await;
    let addr = cluster.nodes[&leader].admin_addr();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let call = |message: Bogus| {
        let channel = channel.clone();
        async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.expect("ready");
            let codec =
                tonic_prost::ProstCodec::<Bogus, deckhand::proto::admin::DrainResponse>::default();
            grpc.unary(
                tonic::Request::new(message),
                http::uri::PathAndQuery::from_static("/deckhand.admin.v1.Admin/Drain"),
                codec,
            )
            .await
        }
    };
    // Field 1 of DrainRequest is a varint; a string there does not decode.
    let err = call(Bogus { text: "x".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // Over the 4 MiB request limit.
    let err = call(Bogus {
        text: "x".repeat(5 * 1024 * 1024),
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // The node is unharmed.
    assert_eq!(cluster.wait_for_leader().await, leader);
    cluster.shutdown().await;
}
