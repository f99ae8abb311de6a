//! Lambda `widget-socket`: wires the shared handler to the Lambda runtime (see baton-lambda).

#[tokio::main]
async fn main() -> Result<(), baton_lambda::Error> {
    baton_lambda::serve_socket().await
}
