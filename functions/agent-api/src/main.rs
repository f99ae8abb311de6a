//! Lambda `agent-api`: wires the shared handler to the Lambda runtime (see baton-lambda).

#[tokio::main]
async fn main() -> Result<(), baton_lambda::Error> {
    baton_lambda::serve_http::<baton_lambda::AgentApiRoutes>().await
}
