from tests.browser import ADMIN_PASSWORD, PHONE, screenshot, sign_in


def test_a_person_signs_in_on_a_phone_and_sees_their_start_page(browser, web_server):
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    page.goto(f"{web_server.base}/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    assert "Invalid username or password" in page.inner_text(".card .banner.error")
    sign_in(page, web_server.base, "admin", ADMIN_PASSWORD)
    assert page.inner_text("h1") == "Hello, admin"
    assert page.locator("meta[name=csrf-token]").get_attribute("content")
    screenshot(page, "home-phone")
    context.close()
