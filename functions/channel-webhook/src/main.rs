//! Lambda `channel-webhook`: Telegram and LINE webhooks, wired to the Lambda runtime (see baton-lambda).

#[tokio::main]
async fn main() -> Result<(), baton_lambda::Error> {
    baton_lambda::serve_http::<baton_lambda::ChannelRoutes>().await
}
