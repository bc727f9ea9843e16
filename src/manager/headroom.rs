//! `GET /v1/cluster/headroom[?node=NAME]`: would every task of that node
//! (or of the busiest node) find a place if it died now? The pure plan is
//! [`crate::headroom::node_loss`]; this is its route.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;

use super::cluster::Manager;
use super::error::ApiError;
use super::extract::{consistent, ReadOptions};
use crate::headroom::{node_loss, NoPlan, NodeLoss};

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HeadroomQuery {
    /// The node assumed lost (default: the busiest).
    #[serde(default)]
    pub node: Option<String>,
    /// Answer from this manager's state without asking the leader (may lag).
    #[serde(default)]
    #[param(value_type = Option<bool>)]
    pub stale: bool,
}

#[utoipa::path(
    get,
    path = "/v1/cluster/headroom",
    tag = "cluster",
    summary = "Would a node's tasks find a place if it died now",
    params(HeadroomQuery),
    responses(
        (status = 200, description = "The plan.", body = NodeLoss),
        crate::manager::error::NoSuchNode,
    ),
)]
pub async fn headroom(
    State(m): State<Arc<Manager>>,
    query: Result<Query<HeadroomQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<NodeLoss>, ApiError> {
    let query = super::extract::query_of(query)?;
    consistent(&m, &ReadOptions { stale: query.stale, ..ReadOptions::default() }).await?;
    let applied = m.state().read();
    match node_loss(&applied.state, query.node.as_deref(), m.default_strategy()) {
        Ok(plan) => Ok(Json(plan)),
        Err(NoPlan::UnknownNode(name)) => Err(ApiError::not_found(format!("no node {name}"))),
        Err(NoPlan::NoNodes) => Err(ApiError::not_found("no node in the cluster: nothing to lose")),
    }
}
