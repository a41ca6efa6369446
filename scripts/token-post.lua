-- wrk script: POST the client_credentials grant to jwt-issuer's token endpoint.
-- env WRK_AUTH  value of the Authorization header (Basic ...)
wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = os.getenv("WRK_AUTH")
